//! Reading a file that may never return data (a pipe swapped in for a file,
//! a pseudo-file like `/proc/kmsg`) without hanging the backup: files are
//! opened non-blocking, and a read that would block waits at most a bounded
//! time for data before the file is given up with a warning.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// How long a read may wait for data before the file is left out.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A non-blocking descriptor read as if blocking, up to a stall timeout.
#[derive(Debug)]
pub(crate) struct PatientReader {
    file: std::fs::File,
    timeout: Duration,
}

impl PatientReader {
    /// Reads `fd` (opened `O_NONBLOCK`), waiting at most `timeout` each time
    /// no data is ready.
    pub fn new(fd: OwnedFd, timeout: Duration) -> Self {
        PatientReader { file: std::fs::File::from(fd), timeout }
    }

    /// The file, for positioning before reading.
    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }

    fn wait_readable(&self) -> io::Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {} s (a pipe or a device-like file): left out", self.timeout.as_secs()),
                ));
            }
            let fd = self.file.as_fd();
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let ts = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Read for PatientReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_readable()?,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_without_data_times_out_and_one_with_data_is_read() {
        let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).unwrap();
        let mut patient = PatientReader::new(reader, Duration::from_millis(200));
        let started = Instant::now();
        let err = patient.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        rustix::io::write(&writer, b"late data").unwrap();
        let mut buf = [0u8; 16];
        let n = patient.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"late data");
        drop(writer);
        assert_eq!(patient.read(&mut buf).unwrap(), 0, "end of data once the writer is gone");
    }
}
