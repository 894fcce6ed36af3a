//! The store conformance suite and durability checks, against the SQLite backend.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use sb_core::config::StoreConfig;
use sb_core::{Role, UnixMillis, UserId};
use sb_store::audit::{ChainBreak, ChainVerifier};
use sb_store::{Admission, AuditEntry, AuditFilter, SqliteStore, Store, UserRecord};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("sb.db"), &StoreConfig::default()).expect("open")
}

#[tokio::test]
async fn sqlite_passes_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    sb_store::conformance::run(&open(&dir)).await;
}

#[tokio::test]
async fn sqlite_passes_chat_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    sb_store::conformance::run_chat(&open(&dir)).await;
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = UserId::new_at(UnixMillis(1));
    {
        let s = open(&dir);
        s.create_user(
            UserRecord {
                id,
                username: "kept".into(),
                display_name: String::new(),
                status_text: String::new(),
                password_hash: "h".into(),
                role: Role::User,
                disabled: false,
                created_at: UnixMillis(1),
            },
            Admission::Open,
            UnixMillis(1),
        )
        .await
        .unwrap();
    }
    let s = open(&dir);
    assert_eq!(s.user_by_id(id).await.unwrap().unwrap().username, "kept");
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_through_sql_and_edits_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    for i in 0..3 {
        s.append_audit(AuditEntry {
            at: UnixMillis(i),
            actor: "a".into(),
            action: "login.success".into(),
            target: String::new(),
            ip: String::new(),
            detail: "{}".into(),
        })
        .await
        .unwrap();
    }
    let raw = rusqlite::Connection::open(dir.path().join("sb.db")).unwrap();
    let blocked = raw.execute("UPDATE audit SET actor = 'b' WHERE seq = 2", []);
    assert!(blocked.is_err(), "append-only trigger must refuse updates");
    raw.execute_batch("DROP TRIGGER audit_no_update; UPDATE audit SET actor = 'b' WHERE seq = 2;")
        .unwrap();
    let all = s
        .query_audit(AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut v = ChainVerifier::default();
    let first_break = all.iter().find_map(|r| v.check(r).err());
    assert_eq!(first_break, Some(ChainBreak::Content { seq: 2 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_commit_together_and_a_failure_undoes_only_itself() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    let mut tasks = Vec::new();
    // 300 writes at once; every third reuses a username, so it must fail alone.
    for i in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let name = if i % 3 == 2 {
                format!("user{}", i - 1)
            } else {
                format!("user{i}")
            };
            store
                .create_user(
                    UserRecord {
                        id: UserId::new_at(UnixMillis(i)),
                        username: name,
                        display_name: String::new(),
                        status_text: String::new(),
                        password_hash: "h".into(),
                        role: Role::User,
                        disabled: false,
                        created_at: UnixMillis(i),
                    },
                    Admission::Open,
                    UnixMillis(i),
                )
                .await
        }));
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(sb_store::StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, conflicts), (200, 100));
    drop(store);
    let reopened = open(&dir);
    assert_eq!(
        reopened.user_count().await.unwrap(),
        200,
        "every acknowledged write is durable"
    );
}

#[tokio::test]
async fn sqlite_passes_files_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    sb_store::conformance::run_files(&open(&dir)).await;
}

#[tokio::test]
async fn sqlite_passes_devices_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    sb_store::conformance::run_devices(&open(&dir)).await;
}
