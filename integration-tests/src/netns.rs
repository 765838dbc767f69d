//! Regions as Linux network namespaces: one per region, each joined to a
//! bridge (in a namespace of its own) by a veth pair, on addresses that
//! exist only inside these namespaces. A partition is a region's link
//! set down at the bridge: its processes keep running and talking to
//! each other, and nothing from outside reaches them, nor they it.
//!
//! Needs root and iproute2 (`deploy/services.sh install`); without them
//! the test fails saying so.

use std::ffi::OsStr;
use std::process::Command;

/// One region's namespace.
#[derive(Debug, Clone)]
pub struct NetRegion {
    /// The region's name (`fra`).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    /// Its address on the bridge.
    pub ip: String,
    /// The veth end on the bridge's side (set down to cut the region off).
    link: String,
}

/// Regions on a bridge; all deleted when dropped.
pub struct Net {
    bridge: String,
    regions: Vec<NetRegion>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip` ({e}): install iproute2 (`deploy/services.sh install`)"));
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Net {
    /// Makes a namespace for each of `names`, on 10.213.0.1, .2, … in order.
    pub fn create(names: &[&str]) -> Net {
        // This process's id keeps the names apart from a crashed run's leftovers.
        let tag = format!("lb{}", std::process::id() % 100_000);
        let bridge = format!("{tag}-br");
        let mut net = Net { bridge: bridge.clone(), regions: Vec::new() };
        ip(&["netns", "add", &bridge]);
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let (inner, link) = (format!("{tag}x{i}a"), format!("{tag}x{i}b"));
            ip(&["netns", "add", &ns]);
            let region = NetRegion { name: (*name).into(), ns: ns.clone(), ip: format!("10.213.0.{}", i + 1), link };
            net.regions.push(region.clone());
            ip(&["link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &region.link, "netns", &bridge]);
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", region.ip), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &bridge, "link", "set", &region.link, "master", "br0"]);
            ip(&["-n", &bridge, "link", "set", &region.link, "up"]);
        }
        net
    }

    /// Region `name`.
    pub fn region(&self, name: &str) -> &NetRegion {
        self.regions.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no region {name}"))
    }

    /// Cuts region `name` off from the others.
    pub fn cut(&self, name: &str) {
        ip(&["-n", &self.bridge, "link", "set", &self.region(name).link, "down"]);
    }

    /// Joins region `name` to the others again.
    pub fn heal(&self, name: &str) {
        ip(&["-n", &self.bridge, "link", "set", &self.region(name).link, "up"]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.regions.iter().map(|r| &r.ns).chain([&self.bridge]) {
            // Whatever still runs inside (a test that failed half-way) would
            // outlive the namespace's name.
            let pids = Command::new("ip").args(["netns", "pids", ns]).output();
            for pid in pids.iter().flat_map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned().lines().map(str::to_owned).collect::<Vec<_>>()
            }) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) on a process of the namespace this test made.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            // Deleting a namespace deletes its veth ends too.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// `program`, run in namespace `ns` when one is named (the same process:
/// `ip netns exec` execs it, so its pid is the program's).
pub fn command(ns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    let Some(ns) = ns else { return Command::new(program) };
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Moves the calling thread into namespace `ns`: the sockets it opens
/// afterwards are the namespace's (other threads stay where they are).
pub fn enter(ns: &str) {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    // SAFETY: setns(2) on a file descriptor we own, for this thread only.
    let done = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(done, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
}
