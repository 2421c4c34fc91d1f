use super::*;

fn person(name: &str, groups: &[&str]) -> Principal {
    Principal { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect(), created_unix_ms: 0 }
}

fn session<'a>(owner: &'a str) -> Resource<'a> {
    Resource::Session { id: "s-1", owner, profile: "default", kind: "job" }
}

/// The default policy's matrix: who may do what to whose things.
#[test]
fn default_policy_lets_people_manage_their_own_and_admins_everything() {
    let policies = Policies::load(None).unwrap();
    let admin = person("root-admin", &["admins"]);
    let alice = person("alice", &["dev"]);
    let profile = Resource::Profile { name: "default", kind: "job" };
    let cases: Vec<(&Principal, Action, Resource, bool)> = vec![
        (&alice, Action::CreateSession, profile.clone(), true),
        (&alice, Action::ReadSession, session("alice"), true),
        (&alice, Action::AttachSession, session("alice"), true),
        (&alice, Action::DeleteSession, session("alice"), true),
        (&alice, Action::ReadSession, session("bob"), false),
        (&alice, Action::AttachSession, session("bob"), false),
        (&alice, Action::AutomateSession, session("alice"), true),
        (&alice, Action::AutomateSession, session("bob"), false),
        (&alice, Action::DeleteSession, session("bob"), false),
        (&alice, Action::ReadRecording, session("alice"), true),
        (&alice, Action::ReadRecording, session("bob"), false),
        (&admin, Action::ReadRecording, session("bob"), true),
        (&alice, Action::ListSessions, Resource::User("alice"), true),
        (&alice, Action::ListSessions, Resource::User("bob"), false),
        (&alice, Action::ListAllSessions, Resource::Server, false),
        (&alice, Action::CreateToken, Resource::User("alice"), true),
        (&alice, Action::CreateToken, Resource::User("bob"), false),
        (&alice, Action::RevokeToken, Resource::User("bob"), false),
        (&alice, Action::SetGroups, Resource::User("alice"), false),
        (&alice, Action::ReadAudit, Resource::Server, false),
        (&alice, Action::ListProfiles, Resource::Server, true),
        (&admin, Action::DeleteSession, session("bob"), true),
        (&admin, Action::AttachSession, session("bob"), true),
        (&admin, Action::AutomateSession, session("bob"), true),
        (&admin, Action::ListAllSessions, Resource::Server, true),
        (&admin, Action::ReadAudit, Resource::Server, true),
        (&admin, Action::SetGroups, Resource::User("bob"), true),
        (&admin, Action::CreateToken, Resource::User("bob"), true),
    ];
    for (principal, action, resource, expected) in cases {
        let decision = policies.authorize(principal, action, &resource, Some(60));
        assert_eq!(decision.allowed, expected, "{} {} {}: {decision:?}", principal.name, action.name(), resource.describe());
        assert!(decision.errors.is_empty(), "{decision:?}");
        if expected {
            assert!(!decision.policies.is_empty(), "an allow names the policy that allowed it");
        }
    }
    let decision = policies.authorize(&alice, Action::ReadSession, &session("alice"), None);
    assert_eq!(decision.policies, vec!["owners-manage-their-sessions".to_string()]);
}

#[test]
fn example_policy_keeps_contractors_to_one_profile_and_a_short_ttl() {
    let text = include_str!("../../policies/examples/contractors.cedar");
    let policies = Policies::parse("contractors.cedar", text).unwrap();
    let carol = person("carol", &["contractors"]);
    let default = Resource::Profile { name: "default", kind: "job" };
    let other = Resource::Profile { name: "research", kind: "job" };
    assert!(policies.authorize(&carol, Action::CreateSession, &default, Some(900)).allowed);
    let long = policies.authorize(&carol, Action::CreateSession, &default, Some(901));
    assert!(!long.allowed);
    assert_eq!(long.policies, vec!["contractors-default-profile-15-minutes".to_string()], "a deny names the forbid that decided it");
    assert!(!policies.authorize(&carol, Action::CreateSession, &other, Some(60)).allowed);
    let dave = person("dave", &["dev"]);
    assert!(policies.authorize(&dave, Action::CreateSession, &other, Some(3600)).allowed, "others keep the default rules");
}

#[test]
fn a_syntax_error_names_its_line() {
    let text = "// first line\npermit (principal, action, resource);\npermit (principal, action resource);\n";
    let error = Policies::parse("bad.cedar", text).unwrap_err().to_string();
    assert!(error.starts_with("bad.cedar:3:"), "{error}");
}

#[test]
fn a_policy_the_schema_rejects_names_its_line() {
    let text = "permit (principal, action, resource);\n\npermit (principal, action == Mayfly::Action::\"read_session\", resource)\nwhen { resource.colour == \"red\" };\n";
    let error = Policies::parse("typo.cedar", text).unwrap_err().to_string();
    assert!(error.starts_with("typo.cedar:4:"), "{error}");
    assert!(error.contains("colour"), "{error}");
}

#[test]
fn an_unknown_action_is_rejected_at_load() {
    let text = "permit (principal, action == Mayfly::Action::\"launch_rocket\", resource);\n";
    let error = Policies::parse("actions.cedar", text).unwrap_err().to_string();
    assert!(error.contains("launch_rocket"), "{error}");
    assert!(error.starts_with("actions.cedar:1:"), "{error}");
}

#[test]
fn lines_and_columns_count_from_one() {
    assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
}

#[test]
fn errors_name_policies_by_their_id_and_empty_files_are_rejected() {
    let text = "@id(\"typo\")\npermit (principal, action == Mayfly::Action::\"read_session\", resource)\nwhen { resource.colour == \"red\" };\n";
    let error = Policies::parse("named.cedar", text).unwrap_err().to_string();
    assert!(error.contains("typo") && !error.contains("policy0"), "{error}");
    let error = Policies::parse("empty.cedar", "// nothing here\n").unwrap_err().to_string();
    assert!(error.contains("contains no policy"), "{error}");
}
