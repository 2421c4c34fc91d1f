//! Authorization: every action is decided by Cedar policies over principals
//! with groups, sessions with owners, and profiles.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;

use crate::store::Principal;

pub const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
pub const DEFAULT_POLICY: &str = include_str!("../policies/default.cedar");

/// An action a principal requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    CreateSession,
    ReadSession,
    AttachSession,
    AutomateSession,
    DeleteSession,
    ReadRecording,
    ListSessions,
    ListAllSessions,
    CreateToken,
    ListTokens,
    RevokeToken,
    SetGroups,
    ListProfiles,
    ReadAudit,
    ReadMetrics,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::CreateSession => "create_session",
            Action::ReadSession => "read_session",
            Action::AttachSession => "attach_session",
            Action::AutomateSession => "automate_session",
            Action::DeleteSession => "delete_session",
            Action::ReadRecording => "read_recording",
            Action::ListSessions => "list_sessions",
            Action::ListAllSessions => "list_all_sessions",
            Action::CreateToken => "create_token",
            Action::ListTokens => "list_tokens",
            Action::RevokeToken => "revoke_token",
            Action::SetGroups => "set_groups",
            Action::ListProfiles => "list_profiles",
            Action::ReadAudit => "read_audit",
            Action::ReadMetrics => "read_metrics",
        }
    }
}

/// The entity an action applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    Profile { name: &'a str, kind: &'a str },
    Session { id: &'a str, owner: &'a str, profile: &'a str, kind: &'a str },
    User(&'a str),
    Server,
}

impl Resource<'_> {
    /// Returns the resource's Cedar name, as audit records show it.
    pub fn describe(&self) -> String {
        match self {
            Resource::Profile { name, .. } => format!("Mayfly::Profile::{name:?}"),
            Resource::Session { id, .. } => format!("Mayfly::Session::{id:?}"),
            Resource::User(name) => format!("Mayfly::User::{name:?}"),
            Resource::Server => "Mayfly::Server::\"mayfly\"".into(),
        }
    }
}

/// The outcome of one authorization, with the policies that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The `@id` (or position) of each policy that decided; empty when no
    /// policy permitted the action.
    pub policies: Vec<String>,
    /// Policies that failed to evaluate; a failing policy never permits.
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}:{line}:{column}: {message}")]
    At { file: String, line: usize, column: usize, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// Turns a byte offset into a line and column, both from 1.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Turns the first located problem of a diagnostic into an error naming the line.
fn located(file: &str, text: &str, diagnostic: &dyn Diagnostic, message: String) -> PolicyError {
    let offset = diagnostic.labels().and_then(|mut labels| labels.next()).map(|label| label.offset());
    let help = diagnostic.help().map(|h| format!(" ({h})")).unwrap_or_default();
    match offset {
        Some(offset) => {
            let (line, column) = line_and_column(text, offset);
            PolicyError::At { file: file.into(), line, column, message: format!("{message}{help}") }
        }
        None => PolicyError::File { file: file.into(), message: format!("{message}{help}") },
    }
}

fn uid(type_name: &str, id: &str) -> EntityUid {
    let type_name = EntityTypeName::from_str(type_name).expect("Mayfly's entity type names are valid");
    EntityUid::from_type_name_and_id(type_name, EntityId::new(id))
}

/// The loaded, validated policy set.
#[derive(Debug)]
pub struct Policies {
    schema: Schema,
    set: PolicySet,
    authorizer: Authorizer,
    /// The origin of the policies: a file path or `built-in`.
    pub source: String,
    /// SHA-256 of the policy text, so that the audit log shows when it changed.
    pub digest: String,
}

impl Policies {
    /// Loads the policy file, or the built-in default policy when `path` is
    /// `None`, and validates it against the schema.
    pub fn load(path: Option<&Path>) -> Result<Policies, PolicyError> {
        match path {
            None => Policies::parse("built-in default policy", DEFAULT_POLICY),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| PolicyError::File {
                    file: path.display().to_string(),
                    message: format!("cannot read the policy file: {e}"),
                })?;
                let mut policies = Policies::parse(&path.display().to_string(), &text)?;
                policies.source = PathBuf::from(path).display().to_string();
                Ok(policies)
            }
        }
    }

    /// Parses and validates policies from text; `file` names them in errors.
    pub fn parse(file: &str, text: &str) -> Result<Policies, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).expect("the built-in schema is valid");
        let set = PolicySet::from_str(text).map_err(|errors| {
            let first = errors.iter().next().expect("a parse failure has an error");
            located(file, text, first, first.to_string())
        })?;
        if set.policies().next().is_none() {
            return Err(PolicyError::File {
                file: file.into(),
                message: "the file contains no policy, so every request would be denied; start from the default policy".into(),
            });
        }
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if let Some(error) = result.validation_errors().next() {
            // Cedar names policies policy0, policy1 and so on. Use their @id instead.
            let mut message = error.to_string();
            for policy in set.policies() {
                if let Some(name) = policy.annotation("id") {
                    message = message.replace(&format!("`{}`", policy.id()), &format!("`{name}`"));
                }
            }
            return Err(located(file, text, error, message));
        }
        use sha2::Digest;
        let digest = mayfly_audit::hex(&sha2::Sha256::digest(text.as_bytes()));
        Ok(Policies { schema, set, authorizer: Authorizer::new(), source: "built-in".into(), digest })
    }

    /// Returns the name a policy is reported under: its `@id` annotation if it has one.
    fn policy_name(&self, id: &cedar_policy::PolicyId) -> String {
        self.set.annotation(id, "id").map(str::to_string).unwrap_or_else(|| id.to_string())
    }

    /// Decides whether `principal` may do `action` on `resource`.
    /// `ttl_seconds` is the requested lifetime, for `create_session`.
    pub fn authorize(&self, principal: &Principal, action: Action, resource: &Resource<'_>, ttl_seconds: Option<i64>) -> Decision {
        match self.try_authorize(principal, action, resource, ttl_seconds) {
            Ok(decision) => decision,
            // A request the schema rejects is denied, never allowed.
            Err(error) => Decision { allowed: false, policies: Vec::new(), errors: vec![error] },
        }
    }

    fn try_authorize(&self, principal: &Principal, action: Action, resource: &Resource<'_>, ttl_seconds: Option<i64>) -> Result<Decision, String> {
        let principal_uid = uid("Mayfly::User", &principal.name);
        let groups: HashSet<EntityUid> = principal.groups.iter().map(|g| uid("Mayfly::Group", g)).collect();
        let mut entities = vec![Entity::new_no_attrs(principal_uid.clone(), groups.clone())];
        entities.extend(groups.iter().map(|g| Entity::new_no_attrs(g.clone(), HashSet::new())));
        let text = |value: &str| RestrictedExpression::new_string(value.to_string());
        let resource_uid = match resource {
            Resource::Profile { name, kind } => {
                let profile = uid("Mayfly::Profile", name);
                let attrs = HashMap::from([("kind".to_string(), text(kind))]);
                entities.push(Entity::new(profile.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?);
                profile
            }
            Resource::Session { id, owner, profile, kind } => {
                let session = uid("Mayfly::Session", id);
                let owner_uid = uid("Mayfly::User", owner);
                let profile_uid = uid("Mayfly::Profile", profile);
                let attrs = HashMap::from([
                    ("owner".to_string(), RestrictedExpression::new_entity_uid(owner_uid)),
                    ("profile".to_string(), RestrictedExpression::new_entity_uid(profile_uid)),
                    ("kind".to_string(), text(kind)),
                ]);
                entities.push(Entity::new(session.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?);
                session
            }
            Resource::User(name) => uid("Mayfly::User", name),
            Resource::Server => uid("Mayfly::Server", "mayfly"),
        };
        let entities = Entities::from_entities(entities, Some(&self.schema)).map_err(|e| e.to_string())?;
        let context = match action {
            Action::CreateSession => Context::from_pairs([(
                "ttl_seconds".to_string(),
                RestrictedExpression::new_long(ttl_seconds.unwrap_or(0)),
            )])
            .map_err(|e| e.to_string())?,
            _ => Context::empty(),
        };
        let request = Request::new(principal_uid, uid("Mayfly::Action", action.name()), resource_uid, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        let response = self.authorizer.is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        Ok(Decision {
            allowed: response.decision() == CedarDecision::Allow,
            policies: diagnostics.reason().map(|id| self.policy_name(id)).collect(),
            errors: diagnostics.errors().map(|e| e.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests;
