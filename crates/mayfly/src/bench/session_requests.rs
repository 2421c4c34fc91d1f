//! The API requests of the session benches: create sessions of one
//! profile, wait until they run, and delete every one the bench created.

use std::time::{Duration, Instant};

use serde_json::json;

use super::http::call;
use super::server::Target;

/// Lifetime of each bench session, so that the server's deadline ends any
/// session the bench fails to delete.
const SESSION_TTL: &str = "10m";
/// Maximum wait for a session to reach `running`, or to end after a delete.
const STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// A session the server created.
pub(super) struct Created {
    pub(super) id: String,
    pub(super) attach_token: String,
}

/// The server's response to a create request.
pub(super) enum CreateAnswer {
    Created(Created),
    /// 503 with the problem type `host-full`: admission control rejected
    /// the session. Contains the problem's detail.
    HostFull(String),
}

/// The sessions of one profile that one bench phase created, deleted on
/// drop unless `delete_all` already did.
pub(super) struct Sessions {
    target: Target,
    profile: String,
    ids: Vec<String>,
}

impl Sessions {
    pub(super) fn new(target: Target, profile: &str) -> Sessions {
        Sessions { target, profile: profile.to_string(), ids: Vec::new() }
    }

    pub(super) fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Requests one session of the profile. Any response but 201 and 503
    /// `host-full` is an error.
    pub(super) fn create(&mut self) -> Result<CreateAnswer, String> {
        let body = json!({ "profile": self.profile, "ttl": SESSION_TTL });
        let (status, answer) = call(self.target.address, "POST", "/v1/sessions", &self.target.token, Some(&body))?;
        match status {
            201 => {
                let id = answer["session"]["id"].as_str().ok_or("the created session has no id")?.to_string();
                let attach_token = answer["attach"]["token"].as_str().ok_or("the created session has no attach token")?.to_string();
                self.ids.push(id.clone());
                Ok(CreateAnswer::Created(Created { id, attach_token }))
            }
            503 if answer["type"] == "urn:mayfly:problem:host-full" => Ok(CreateAnswer::HostFull(answer["detail"].as_str().unwrap_or_default().to_string())),
            _ => Err(format!("creating a {} session failed with status {status}: {}", self.profile, answer["detail"])),
        }
    }

    /// Requests one session and returns an error unless it is created.
    pub(super) fn create_one(&mut self) -> Result<Created, String> {
        match self.create()? {
            CreateAnswer::Created(created) => Ok(created),
            CreateAnswer::HostFull(detail) => Err(format!("creating a {} session failed: the host is full: {detail}", self.profile)),
        }
    }

    /// Waits until session `id` is `running`.
    pub(super) fn wait_running(&self, id: &str) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let (status, answer) = call(self.target.address, "GET", &format!("/v1/sessions/{id}"), &self.target.token, None)?;
            if status == 410 {
                return Err(format!("{} session {id} ended before the bench used it: {}", self.profile, answer["detail"]));
            }
            // A live session's record is the whole body.
            if answer["state"] == "running" {
                return Ok(());
            }
            if started.elapsed() > STATE_TIMEOUT {
                return Err(format!("{} session {id} was not running after {} s: {}", self.profile, STATE_TIMEOUT.as_secs(), answer["state"]));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes every session this set created and waits until each has
    /// ended. Returns the first error after trying them all.
    pub(super) fn delete_all(&mut self) -> Result<(), String> {
        let mut first_error = None;
        for id in std::mem::take(&mut self.ids) {
            if let Err(error) = self.delete(&id) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn delete(&self, id: &str) -> Result<(), String> {
        let path = format!("/v1/sessions/{id}");
        let (status, answer) = call(self.target.address, "DELETE", &path, &self.target.token, None)?;
        if status != 200 && status != 202 {
            return Err(format!("deleting {} session {id} failed with status {status}: {}", self.profile, answer["detail"]));
        }
        let started = Instant::now();
        while call(self.target.address, "GET", &path, &self.target.token, None)?.0 != 410 {
            if started.elapsed() > STATE_TIMEOUT {
                return Err(format!("{} session {id} had not ended {} s after its delete", self.profile, STATE_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        if let Err(error) = self.delete_all() {
            eprintln!("mayfly: {error}. Stopping the bench's server destroys the sessions left.");
        }
    }
}
