//! `Admin`: what operators call. Each call is admitted by role and audited
//! (who, what, on what, the outcome).

use std::sync::Arc;

use lifeboat_common::audit;
use lifeboat_proto::v1;
use lifeboat_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::{Caller, Gate, outcome};
use crate::authz::{AdminCall, Call};
use crate::core::{Query, Shared};

/// The `Admin` service.
#[derive(Debug)]
pub struct AdminService {
    shared: Arc<Shared>,
    gate: Arc<Gate>,
}

impl AdminService {
    /// The service, in front of the core.
    pub fn new(shared: Arc<Shared>, gate: Arc<Gate>) -> Self {
        AdminService { shared, gate }
    }

    fn admit<T>(&self, request: &Request<T>, call: AdminCall, target: Option<&str>) -> Result<Caller, Status> {
        let who = Gate::identity(request)?;
        self.gate.admit(&who, &Call::Admin(call), target)
    }

    fn audited<T>(
        &self,
        caller: &Caller,
        call: AdminCall,
        target: Option<&str>,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.gate.record(&caller.who.to_string(), caller.role, &Call::Admin(call), target, &outcome(&result));
        result.map(Response::new)
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, request: Request<v1::StatusRequest>) -> Result<Response<v1::StatusReply>, Status> {
        let caller = self.admit(&request, AdminCall::Status, None)?;
        let result = self.shared.ask(Query::Status).await;
        self.audited(&caller, AdminCall::Status, None, result)
    }

    async fn list_agents(
        &self,
        request: Request<v1::ListAgentsRequest>,
    ) -> Result<Response<v1::ListAgentsReply>, Status> {
        let caller = self.admit(&request, AdminCall::ListAgents, None)?;
        let result = self.shared.ask(Query::Agents).await;
        self.audited(&caller, AdminCall::ListAgents, None, result)
    }

    async fn list_jobs(&self, request: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsReply>, Status> {
        let caller = self.admit(&request, AdminCall::ListJobs, None)?;
        let req = request.into_inner();
        let result = self.shared.ask(|r| Query::Jobs(req, r)).await;
        self.audited(&caller, AdminCall::ListJobs, None, result)
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsReply>, Status> {
        let caller = self.admit(&request, AdminCall::ListSnapshots, None)?;
        let req = request.into_inner();
        // The backups the coordinator ran and saw succeed, newest first.
        let listed = self
            .shared
            .ask(|r| Query::Jobs(v1::ListJobsRequest { host: req.host.clone(), active: false, limit: u32::MAX }, r))
            .await
            .map(|jobs| v1::ListSnapshotsReply {
                snapshots: jobs
                    .jobs
                    .into_iter()
                    .filter(|j| {
                        req.source_id.is_empty() || j.assignment.as_ref().is_some_and(|a| a.source_id == req.source_id)
                    })
                    .filter_map(|j| j.result.and_then(|r| r.snapshot))
                    .collect(),
            });
        self.audited(&caller, AdminCall::ListSnapshots, None, listed)
    }

    async fn run_backup(&self, request: Request<v1::RunBackupRequest>) -> Result<Response<v1::JobReply>, Status> {
        let target = format!("{}/{}", request.get_ref().host, request.get_ref().source_id);
        let caller = self.admit(&request, AdminCall::RunBackup, Some(&target))?;
        let req = request.into_inner();
        let by = caller.who.to_string();
        let result = self.shared.ask(|r| Query::RunBackup(req, by, r)).await;
        self.audited(&caller, AdminCall::RunBackup, Some(&target), result)
    }

    async fn restore(&self, request: Request<v1::RestoreRequest>) -> Result<Response<v1::JobReply>, Status> {
        let target = format!("{}/{}", request.get_ref().host, request.get_ref().source_id);
        let caller = self.admit(&request, AdminCall::Restore, Some(&target))?;
        let req = request.into_inner();
        let by = caller.who.to_string();
        let result = self.shared.ask(|r| Query::Restore(req, by, r)).await;
        self.audited(&caller, AdminCall::Restore, Some(&target), result)
    }

    async fn list_drills(
        &self,
        request: Request<v1::ListDrillsRequest>,
    ) -> Result<Response<v1::ListDrillsReply>, Status> {
        let caller = self.admit(&request, AdminCall::ListDrills, None)?;
        let req = request.into_inner();
        let result = self.shared.ask(|r| Query::Drills(req, r)).await;
        self.audited(&caller, AdminCall::ListDrills, None, result)
    }

    async fn show_drill(&self, request: Request<v1::ShowDrillRequest>) -> Result<Response<v1::DrillReply>, Status> {
        let target = request.get_ref().id.clone();
        let caller = self.admit(&request, AdminCall::ShowDrill, Some(&target))?;
        let req = request.into_inner();
        let result = self.shared.ask(|r| Query::Drill(req, r)).await;
        self.audited(&caller, AdminCall::ShowDrill, Some(&target), result)
    }

    async fn run_drill(&self, request: Request<v1::RunDrillRequest>) -> Result<Response<v1::JobReply>, Status> {
        let target = format!("drill:{}", request.get_ref().name);
        let caller = self.admit(&request, AdminCall::RunDrill, Some(&target))?;
        let req = request.into_inner();
        let by = caller.who.to_string();
        let result = self.shared.ask(|r| Query::RunDrill(req, by, r)).await;
        self.audited(&caller, AdminCall::RunDrill, Some(&target), result)
    }

    async fn cancel_job(&self, request: Request<v1::CancelJobRequest>) -> Result<Response<v1::CancelJobReply>, Status> {
        let target = request.get_ref().job_id.clone();
        let caller = self.admit(&request, AdminCall::CancelJob, Some(&target))?;
        let req = request.into_inner();
        let by = caller.who.to_string();
        let result = self.shared.ask(|r| Query::Cancel(req, by, r)).await;
        self.audited(&caller, AdminCall::CancelJob, Some(&target), result)
    }

    async fn list_incidents(
        &self,
        request: Request<v1::ListIncidentsRequest>,
    ) -> Result<Response<v1::ListIncidentsReply>, Status> {
        let caller = self.admit(&request, AdminCall::ListIncidents, None)?;
        let all = request.get_ref().all;
        let result = self.shared.ask(|r| Query::Incidents(all, r)).await;
        self.audited(&caller, AdminCall::ListIncidents, None, result)
    }

    async fn ack_incident(
        &self,
        request: Request<v1::AckIncidentRequest>,
    ) -> Result<Response<v1::IncidentReply>, Status> {
        let target = request.get_ref().id.clone();
        let caller = self.admit(&request, AdminCall::AckIncident, Some(&target))?;
        let by = caller.who.to_string();
        let id = target.clone();
        let result = self.shared.ask(|r| Query::Ack(id, by, r)).await;
        self.audited(&caller, AdminCall::AckIncident, Some(&target), result)
    }

    async fn failover_status(
        &self,
        request: Request<v1::FailoverStatusRequest>,
    ) -> Result<Response<v1::FailoverStatusReply>, Status> {
        let caller = self.admit(&request, AdminCall::FailoverStatus, None)?;
        let result = self.shared.ask(Query::Failover).await;
        self.audited(&caller, AdminCall::FailoverStatus, None, result)
    }

    async fn promote(&self, request: Request<v1::PromoteRequest>) -> Result<Response<v1::FailoverGroupReply>, Status> {
        let r = request.get_ref();
        let target = format!("{} -> {}{}", r.group, r.to, if r.force { " (forced)" } else { "" });
        let caller = self.admit(&request, AdminCall::Promote, Some(&target))?;
        let by = caller.who.to_string();
        let result = self.shared.ask(|reply| Query::Promote(request.into_inner(), by, reply)).await;
        self.audited(&caller, AdminCall::Promote, Some(&target), result)
    }

    async fn switchover(
        &self,
        request: Request<v1::PromoteRequest>,
    ) -> Result<Response<v1::FailoverGroupReply>, Status> {
        let r = request.get_ref();
        let target = format!("{} -> {}", r.group, r.to);
        let caller = self.admit(&request, AdminCall::Switchover, Some(&target))?;
        let by = caller.who.to_string();
        let result = self.shared.ask(|reply| Query::Switchover(request.into_inner(), by, reply)).await;
        self.audited(&caller, AdminCall::Switchover, Some(&target), result)
    }

    async fn pause_failover(
        &self,
        request: Request<v1::PauseFailoverRequest>,
    ) -> Result<Response<v1::FailoverGroupReply>, Status> {
        let r = request.get_ref();
        let target = format!("{}: {}", r.group, if r.pause { "pause" } else { "resume" });
        let caller = self.admit(&request, AdminCall::PauseFailover, Some(&target))?;
        let by = caller.who.to_string();
        let result = self.shared.ask(|reply| Query::PauseFailover(request.into_inner(), by, reply)).await;
        self.audited(&caller, AdminCall::PauseFailover, Some(&target), result)
    }

    async fn audit(&self, request: Request<v1::AuditRequest>) -> Result<Response<v1::AuditReply>, Status> {
        let caller = self.admit(&request, AdminCall::Audit, None)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let path = self.gate.audit_log().path().to_owned();
        let result = tokio::task::spawn_blocking(move || audit::tail(&path, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))
            .and_then(|r| r.map_err(|e| Status::data_loss(e.to_string())))
            .map(|(verified, entries)| v1::AuditReply {
                entries: entries
                    .into_iter()
                    .map(|e| v1::AuditEntry {
                        seq: e.seq,
                        time_unix_ms: e.time.timestamp_millis(),
                        principal: e.record.principal,
                        role: e.record.role.unwrap_or_default(),
                        action: e.record.action,
                        target: e.record.target.unwrap_or_default(),
                        result: e.record.result,
                        hash: e.hash,
                    })
                    .collect(),
                head: verified.head,
            });
        self.audited(&caller, AdminCall::Audit, None, result)
    }
}
