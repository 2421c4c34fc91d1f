//! The same checks against SQLite and a real PostgreSQL.

use super::*;
use crate::testing::{postgres_url, temp_dir};

fn session(id: &str, owner: &str, created: i64) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        owner: owner.into(),
        profile: "default".into(),
        kind: "job".into(),
        state: SessionState::Pending,
        command: vec!["/bin/true".into()],
        ttl_ms: 30_000,
        created_unix_ms: created,
        deadline_unix_ms: created + 30_000,
        ended_unix_ms: None,
        end: None,
        exit_code: None,
        detail: None,
        isolation: None,
        start: None,
    }
}

async fn exercise(store: Store) {
    store.ping().await.unwrap();
    let suffix = format!("{}", std::process::id());
    let alice = format!("alice-{suffix}");
    store.put_principal(&alice, &["dev".into()], 1).await.unwrap();
    store.ensure_principal(&alice, &["other".into()], 2).await.unwrap();
    assert_eq!(store.principal(&alice).await.unwrap().unwrap().groups, vec!["dev".to_string()], "ensure must not replace groups");

    let token = TokenRecord {
        id: format!("t-{suffix}"),
        prefix: format!("mfy_{suffix}"),
        hash: "ab".repeat(32),
        principal: alice.clone(),
        name: "laptop".into(),
        created_unix_ms: 10,
        expires_unix_ms: Some(1_000),
        revoked_unix_ms: None,
    };
    store.insert_token(&token).await.unwrap();
    assert_eq!(store.token_by_prefix(&token.prefix).await.unwrap().unwrap(), token);
    assert_eq!(store.tokens(Some(&alice)).await.unwrap().len(), 1);
    assert!(store.revoke_token(&token.id, 20).await.unwrap());
    assert!(!store.revoke_token(&token.id, 30).await.unwrap(), "a second revoke reports nothing new");
    assert_eq!(store.token(&token.id).await.unwrap().unwrap().revoked_unix_ms, Some(20));

    let ids: Vec<String> = (0..5).map(|i| format!("s-{suffix}-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        store.insert_session(&session(id, &alice, 100 + i as i64)).await.unwrap();
    }
    let (live, recent) = store.quota_usage(&alice, 103).await.unwrap();
    assert_eq!((live, recent), (5, 2));

    assert!(store.move_session(&ids[0], SessionState::Starting).await.unwrap());
    assert!(!store.move_session(&ids[0], SessionState::Pending).await.unwrap(), "no move back");
    assert!(store.move_session(&ids[0], SessionState::Running).await.unwrap());
    assert!(store.move_session(&ids[0], SessionState::Terminating).await.unwrap());
    let ending = Ending {
        state: SessionState::Destroyed,
        ended_unix_ms: 500,
        end: serde_json::json!({"reason": "destroyed", "reason_detail": "test"}),
        exit_code: 121,
        detail: serde_json::json!({"teardown": {"clean": true}}),
    };
    assert!(store.end_session(&ids[0], &ending).await.unwrap());
    assert!(!store.end_session(&ids[0], &ending).await.unwrap(), "ending twice changes nothing");
    assert!(!store.move_session(&ids[0], SessionState::Running).await.unwrap());
    let ended = store.session(&ids[0]).await.unwrap().unwrap();
    assert_eq!(ended.state, SessionState::Destroyed);
    assert_eq!(ended.exit_code, Some(121));
    assert_eq!(store.quota_usage(&alice, 0).await.unwrap().0, 4, "an ended session frees its quota");

    let page = store.sessions(&SessionFilter { owner: Some(alice.clone()), limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!(page.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), ids[..2].to_vec());
    let next = SessionFilter { owner: Some(alice.clone()), after: Some(ids[1].clone()), limit: 10, ..Default::default() };
    assert_eq!(store.sessions(&next).await.unwrap().len(), 3);
    let newest = SessionFilter { owner: Some(alice.clone()), limit: 2, newest_first: true, ..Default::default() };
    assert_eq!(store.sessions(&newest).await.unwrap().iter().map(|s| s.id.clone()).collect::<Vec<_>>(), vec![ids[4].clone(), ids[3].clone()]);
    let older = SessionFilter { owner: Some(alice.clone()), limit: 5, newest_first: true, after: Some(ids[3].clone()), ..Default::default() };
    assert_eq!(store.sessions(&older).await.unwrap().len(), 3);
    let destroyed = SessionFilter { owner: Some(alice.clone()), state: Some(SessionState::Destroyed), limit: 10, ..Default::default() };
    assert_eq!(store.sessions(&destroyed).await.unwrap().len(), 1);
    assert!(store.unfinished_sessions().await.unwrap().iter().all(|s| !s.state.is_final()));

    let first = store.append_event(&ids[1], "created", SessionState::Pending, &serde_json::json!({}), 1).await.unwrap();
    let second = store.append_event(&ids[1], "starting", SessionState::Starting, &serde_json::json!({"x": 1}), 2).await.unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert_eq!(store.events(&ids[1], 1).await.unwrap(), vec![second]);

    let attach = AttachTokenRecord { hash: format!("h-{suffix}"), session_id: ids[1].clone(), principal: alice.clone(), expires_unix_ms: 50 };
    store.insert_attach_token(&attach).await.unwrap();
    assert_eq!(store.attach_token(&attach.hash).await.unwrap(), Some(attach.clone()));
    store.prune_attach_tokens(60).await.unwrap();
    assert_eq!(store.attach_token(&attach.hash).await.unwrap(), None, "expired attach tokens are pruned");
}

#[tokio::test]
async fn sqlite_store_keeps_what_it_is_given() {
    let dir = temp_dir("store");
    let store = Store::open_sqlite(&dir.join("mayfly.db")).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    exercise(store).await;
    let reopened = Store::open_sqlite(&dir.join("mayfly.db")).await.unwrap();
    assert_eq!(reopened.count_by_state().await.unwrap().iter().map(|(_, n)| n).sum::<i64>(), 5, "data survives a reopen");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn postgres_store_keeps_what_it_is_given() {
    let store = Store::open_postgres(&postgres_url()).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    exercise(store).await;
}

#[test]
fn placeholders_are_numbered_for_postgres() {
    assert_eq!(numbered("SELECT ? WHERE a = ? AND b IN (?, ?)"), "SELECT $1 WHERE a = $2 AND b IN ($3, $4)");
}

#[tokio::test]
async fn ended_sessions_without_an_end_event_are_found() {
    let dir = temp_dir("store-ended");
    let store = Store::open_sqlite(&dir.join("mayfly.db")).await.unwrap();
    for id in ["s-a", "s-b"] {
        store.insert_session(&session(id, "alice", 1)).await.unwrap();
        let ending = Ending { state: SessionState::Failed, ended_unix_ms: 2, end: serde_json::json!({}), exit_code: 120, detail: serde_json::json!({}) };
        assert!(store.end_session(id, &ending).await.unwrap());
    }
    store.append_event("s-a", "ended", SessionState::Failed, &serde_json::json!({}), 3).await.unwrap();
    let missing: Vec<String> = store.ended_without_event().await.unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(missing, vec!["s-b".to_string()]);
    store.insert_session(&session("s-c", "alice", 1)).await.unwrap();
    assert_eq!(store.prune_sessions(3).await.unwrap(), 2, "the two ended sessions go, the live one stays");
    assert!(store.session("s-c").await.unwrap().is_some());
    assert!(store.events("s-a", 0).await.unwrap().is_empty(), "events go with their session");
    std::fs::remove_dir_all(dir).unwrap();
}
