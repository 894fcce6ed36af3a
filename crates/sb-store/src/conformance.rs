//! The behaviour every [`Store`] backend must show. Backends call [`run`] from their tests with a
//! fresh, empty store; it panics (as a test does) at the first broken contract.

#![allow(clippy::unwrap_used)]

use crate::audit::ChainVerifier;
use crate::chat::ChatStore;
use crate::*;

fn user(name: &str, role: Role, at: i64) -> UserRecord {
    UserRecord {
        id: UserId::new_at(UnixMillis(at)),
        username: name.to_string(),
        display_name: String::new(),
        status_text: String::new(),
        password_hash: format!("$argon2id$fake${name}"),
        role,
        disabled: false,
        created_at: UnixMillis(at),
    }
}

fn session(user: UserId, seed: u8, at: i64) -> SessionRecord {
    SessionRecord {
        id: SessionId::new_at(UnixMillis(at)),
        user_id: user,
        token_hash: [seed; 32],
        created_at: UnixMillis(at),
        expires_at: UnixMillis(at + 1_000_000),
        last_used_at: UnixMillis(at),
        client: "conformance".into(),
        ip: "127.0.0.1".into(),
        revoked_at: None,
    }
}

/// Runs every check against an empty store.
pub async fn run(store: &dyn Store) {
    setup_token_admits_exactly_one_admin(store).await;
    usernames_are_unique_case_insensitively(store).await;
    invites_are_single_use_and_expire(store).await;
    profile_role_and_disable_round_trip(store).await;
    sessions_look_up_by_hash_and_revoke(store).await;
    password_change_revokes_other_sessions(store).await;
    api_tokens_round_trip_and_revoke(store).await;
    audit_appends_form_a_verifiable_chain(store).await;
    dashboards_are_per_user_and_bounded(store).await;
    store.flush().await.expect("flush");
}

async fn setup_token_admits_exactly_one_admin(s: &dyn Store) {
    assert_eq!(s.user_count().await.unwrap(), 0);
    assert!(s.set_setup_token([6; 32]).await.unwrap());
    assert!(
        s.set_setup_token([7; 32]).await.unwrap(),
        "before the first account, a new setup token replaces the old"
    );
    let replaced = s
        .create_user(
            user("early", Role::Admin, 1),
            Admission::Setup {
                token_hash: [6; 32],
            },
            UnixMillis(1),
        )
        .await;
    assert!(matches!(replaced, Err(StoreError::AdmissionRejected)));
    let wrong = s
        .create_user(
            user("mallory", Role::Admin, 1),
            Admission::Setup {
                token_hash: [8; 32],
            },
            UnixMillis(1),
        )
        .await;
    assert!(matches!(wrong, Err(StoreError::AdmissionRejected)));
    assert!(
        s.user_by_username("mallory").await.unwrap().is_none(),
        "a rejected admission must leave no user behind"
    );
    let admin = user("root", Role::Admin, 2);
    s.create_user(
        admin.clone(),
        Admission::Setup {
            token_hash: [7; 32],
        },
        UnixMillis(2),
    )
    .await
    .unwrap();
    assert_eq!(s.user_by_id(admin.id).await.unwrap(), Some(admin));
    let reuse = s
        .create_user(
            user("second", Role::Admin, 3),
            Admission::Setup {
                token_hash: [7; 32],
            },
            UnixMillis(3),
        )
        .await;
    assert!(matches!(reuse, Err(StoreError::AdmissionRejected)));
    assert!(
        !s.set_setup_token([9; 32]).await.unwrap(),
        "no setup token once users exist"
    );
}

async fn usernames_are_unique_case_insensitively(s: &dyn Store) {
    s.create_user(
        user("Alice", Role::User, 10),
        Admission::Open,
        UnixMillis(10),
    )
    .await
    .unwrap();
    let dup = s
        .create_user(
            user("alice", Role::User, 11),
            Admission::Open,
            UnixMillis(11),
        )
        .await;
    assert!(matches!(dup, Err(StoreError::Conflict(_))));
    let found = s.user_by_username("ALICE").await.unwrap().unwrap();
    assert_eq!(found.username, "Alice");
}

async fn invites_are_single_use_and_expire(s: &dyn Store) {
    let admin = s.user_by_username("root").await.unwrap().unwrap();
    for (seed, expires) in [(20u8, 1_000i64), (21, 50)] {
        s.insert_invite(InviteRecord {
            id: InviteId::new_at(UnixMillis(20)),
            token_hash: [seed; 32],
            created_by: admin.id,
            created_at: UnixMillis(20),
            expires_at: UnixMillis(expires),
            used_by: None,
        })
        .await
        .unwrap();
    }
    let bob = user("bob", Role::User, 30);
    s.create_user(
        bob.clone(),
        Admission::Invite {
            token_hash: [20; 32],
        },
        UnixMillis(100),
    )
    .await
    .unwrap();
    let again = s
        .create_user(
            user("carol", Role::User, 31),
            Admission::Invite {
                token_hash: [20; 32],
            },
            UnixMillis(100),
        )
        .await;
    assert!(matches!(again, Err(StoreError::AdmissionRejected)));
    let expired = s
        .create_user(
            user("dave", Role::User, 32),
            Admission::Invite {
                token_hash: [21; 32],
            },
            UnixMillis(100),
        )
        .await;
    assert!(matches!(expired, Err(StoreError::AdmissionRejected)));
    let invites = s.list_invites().await.unwrap();
    assert_eq!(invites.len(), 2);
    assert_eq!(
        invites
            .iter()
            .find(|i| i.token_hash == [20; 32])
            .unwrap()
            .used_by,
        Some(bob.id)
    );
}

async fn profile_role_and_disable_round_trip(s: &dyn Store) {
    let bob = s.user_by_username("bob").await.unwrap().unwrap();
    s.update_profile(bob.id, "Bob B", "on call").await.unwrap();
    s.set_role(bob.id, Role::Admin).await.unwrap();
    s.set_disabled(bob.id, true).await.unwrap();
    let got = s.user_by_id(bob.id).await.unwrap().unwrap();
    assert_eq!(
        (got.display_name.as_str(), got.status_text.as_str()),
        ("Bob B", "on call")
    );
    assert_eq!(got.role, Role::Admin);
    assert!(got.disabled);
    s.set_role(bob.id, Role::User).await.unwrap();
    s.set_disabled(bob.id, false).await.unwrap();
    let missing = UserId::new_at(UnixMillis(1));
    assert!(matches!(
        s.set_role(missing, Role::Admin).await,
        Err(StoreError::NotFound)
    ));
    let names: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["root", "Alice", "bob"]);
}

async fn sessions_look_up_by_hash_and_revoke(s: &dyn Store) {
    let alice = s.user_by_username("alice").await.unwrap().unwrap();
    let one = session(alice.id, 40, 40);
    s.insert_session(one.clone()).await.unwrap();
    let (got, owner) = s.session_by_token_hash([40; 32]).await.unwrap().unwrap();
    assert_eq!(got, one);
    assert_eq!(owner.id, alice.id);
    assert!(s.session_by_token_hash([41; 32]).await.unwrap().is_none());
    s.touch_session(one.id, UnixMillis(45)).await.unwrap();
    assert_eq!(
        s.session_by_id(one.id).await.unwrap().unwrap().last_used_at,
        UnixMillis(45)
    );
    assert!(s.revoke_session(one.id, UnixMillis(50)).await.unwrap());
    assert!(
        !s.revoke_session(one.id, UnixMillis(51)).await.unwrap(),
        "revoking twice reports false"
    );
    let (got, _) = s.session_by_token_hash([40; 32]).await.unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(UnixMillis(50)));
    let two = session(alice.id, 42, 52);
    s.insert_session(two.clone()).await.unwrap();
    assert_eq!(
        s.revoke_user_sessions(alice.id, UnixMillis(60))
            .await
            .unwrap(),
        vec![two.id]
    );
    assert_eq!(s.list_sessions(alice.id).await.unwrap().len(), 2);

    // Pruning removes sessions that ended before the cutoff, and nothing live.
    let live = session(alice.id, 43, 61);
    s.insert_session(live.clone()).await.unwrap();
    assert_eq!(
        s.prune_sessions(UnixMillis(55)).await.unwrap(),
        1,
        "revoked at 50"
    );
    assert_eq!(
        s.prune_sessions(UnixMillis(61)).await.unwrap(),
        1,
        "revoked at 60"
    );
    let left: Vec<SessionId> = s
        .list_sessions(alice.id)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(left, vec![live.id]);
    assert_eq!(
        s.prune_sessions(live.expires_at.plus(std::time::Duration::from_millis(1)))
            .await
            .unwrap(),
        1,
        "expired"
    );
    assert!(s.session_by_token_hash([43; 32]).await.unwrap().is_none());
}

async fn password_change_revokes_other_sessions(s: &dyn Store) {
    let bob = s.user_by_username("bob").await.unwrap().unwrap();
    let keep = session(bob.id, 70, 70);
    let other = session(bob.id, 71, 71);
    s.insert_session(keep.clone()).await.unwrap();
    s.insert_session(other.clone()).await.unwrap();
    let revoked = s
        .change_password(bob.id, "$argon2id$new", Some(keep.id), UnixMillis(72))
        .await
        .unwrap();
    assert_eq!(revoked, vec![other.id]);
    assert!(
        s.session_by_id(keep.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );
    assert_eq!(
        s.user_by_id(bob.id).await.unwrap().unwrap().password_hash,
        "$argon2id$new"
    );
}

async fn api_tokens_round_trip_and_revoke(s: &dyn Store) {
    let alice = s.user_by_username("alice").await.unwrap().unwrap();
    let t = ApiTokenRecord {
        id: TokenId::new_at(UnixMillis(80)),
        user_id: alice.id,
        name: "ci".into(),
        token_hash: [80; 32],
        scopes: vec!["read".into(), "write".into()],
        created_at: UnixMillis(80),
        expires_at: Some(UnixMillis(10_000)),
        last_used_at: None,
        revoked_at: None,
    };
    s.insert_token(t.clone()).await.unwrap();
    let (got, owner) = s.token_by_hash([80; 32]).await.unwrap().unwrap();
    assert_eq!((got, owner.id), (t.clone(), alice.id));
    s.touch_token(t.id, UnixMillis(85)).await.unwrap();
    assert_eq!(
        s.token_by_id(t.id).await.unwrap().unwrap().last_used_at,
        Some(UnixMillis(85))
    );
    assert!(s.revoke_token(t.id, UnixMillis(90)).await.unwrap());
    assert!(!s.revoke_token(t.id, UnixMillis(91)).await.unwrap());
    let listed = s.list_tokens(alice.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].revoked_at, Some(UnixMillis(90)));
}

async fn audit_appends_form_a_verifiable_chain(s: &dyn Store) {
    for i in 0..5 {
        let rec = s
            .append_audit(AuditEntry {
                at: UnixMillis(100 + i),
                actor: if i % 2 == 0 { "alice" } else { "bob" }.into(),
                action: if i < 3 {
                    "login.success"
                } else {
                    "permission.denied"
                }
                .into(),
                target: String::new(),
                ip: "127.0.0.1".into(),
                detail: "{}".into(),
            })
            .await
            .unwrap();
        assert_eq!(rec.seq, i + 1);
    }
    let all = s
        .query_audit(AuditFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    let mut v = ChainVerifier::default();
    for r in &all {
        v.check(r).expect("chain verifies");
    }
    let denied = s
        .query_audit(AuditFilter {
            action_prefix: Some("permission.".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);
    let by_alice = s
        .query_audit(AuditFilter {
            actor: Some("alice".into()),
            since: Some(UnixMillis(101)),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        by_alice.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![3, 5]
    );
    let page = s
        .query_audit(AuditFilter {
            after_seq: Some(2),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    let like_is_literal = s
        .query_audit(AuditFilter {
            action_prefix: Some("login_".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        like_is_literal.is_empty(),
        "'_' in a prefix is not a wildcard"
    );
}

/// The chat half of the contract, for backends that store chat too. Needs an empty store.
pub async fn run_chat<S: Store + ChatStore>(s: &S) {
    use crate::chat::*;
    let mut users = Vec::new();
    for (i, name) in ["ann", "ben", "cat"].iter().enumerate() {
        let u = user(name, Role::User, 1_000 + i as i64);
        s.create_user(u.clone(), Admission::Open, UnixMillis(1_000))
            .await
            .unwrap();
        users.push(u.id);
    }
    let (ann, ben, cat) = (users[0], users[1], users[2]);
    let room = RoomRecord {
        id: sb_core::RoomId::new_at(UnixMillis(2_000)),
        kind: RoomKind::Group,
        name: "ops".into(),
        topic: "on call".into(),
        public: true,
        created_by: ann,
        created_at: UnixMillis(2_000),
        last_seq: 0,
        encrypted: false,
        mls_epoch: 0,
    };
    s.create_room(room.clone()).await.unwrap();
    let dup = s
        .create_room(RoomRecord {
            id: sb_core::RoomId::new_at(UnixMillis(2_001)),
            name: "OPS".into(),
            ..room.clone()
        })
        .await;
    assert!(
        matches!(dup, Err(StoreError::Conflict(_))),
        "group names are unique"
    );
    let access = s.room_access(room.id, ann).await.unwrap().unwrap();
    assert_eq!(
        (access.role, access.banned),
        (Some(sb_core::RoomRole::Owner), false)
    );
    assert_eq!(
        s.room_access(room.id, ben).await.unwrap().unwrap().role,
        None
    );

    let add = |u, max| {
        s.add_member(
            room.id,
            u,
            sb_core::RoomRole::Member,
            max,
            UnixMillis(2_100),
        )
    };
    assert_eq!(add(ben, 10).await.unwrap(), MemberChange::Added);
    assert_eq!(add(ben, 10).await.unwrap(), MemberChange::AlreadyMember);
    assert_eq!(add(cat, 2).await.unwrap(), MemberChange::RoomFull);
    assert!(
        s.set_member_role(room.id, ben, sb_core::RoomRole::Moderator)
            .await
            .unwrap()
    );
    assert_eq!(
        s.room_access(room.id, ben).await.unwrap().unwrap().role,
        Some(sb_core::RoomRole::Moderator)
    );
    assert!(
        s.set_member_role(room.id, ben, sb_core::RoomRole::Member)
            .await
            .unwrap()
    );
    assert!(
        !s.set_member_role(room.id, cat, sb_core::RoomRole::Member)
            .await
            .unwrap(),
        "not a member"
    );
    let names: Vec<String> = s
        .members(room.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.username)
        .collect();
    assert_eq!(names, vec!["ann", "ben"]);

    let send = |sender, id: &str| NewMessage {
        room_id: room.id,
        message_id: id.to_string(),
        sender,
        body: format!("body of {id}"),
        reply_to: None,
        at: UnixMillis(3_000),
        kind: MessageKind::Message,
        target: None,
        attachments: Vec::new(),
    };
    for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
        let a = s.append_message(send(ann, id)).await.unwrap();
        assert!(matches!(a, Appended::New(_)));
        assert_eq!(a.record().seq, i as i64 + 1, "dense per-room sequence");
    }
    let again = s.append_message(send(ann, "m2")).await.unwrap();
    assert_eq!(
        again,
        Appended::Duplicate(s.messages_after(room.id, 1, 1).await.unwrap().remove(0))
    );
    let other_sender = s.append_message(send(ben, "m2")).await.unwrap();
    assert_eq!(other_sender.record().seq, 4, "ids are per sender");
    assert_eq!(
        s.room_access(room.id, ann)
            .await
            .unwrap()
            .unwrap()
            .room
            .last_seq,
        4
    );
    let seqs = |v: Vec<MessageRecord>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(s.messages_after(room.id, 0, 10).await.unwrap()),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        seqs(s.messages_after(room.id, 2, 1).await.unwrap()),
        vec![3]
    );
    assert_eq!(
        seqs(s.messages_before(room.id, 4, 2).await.unwrap()),
        vec![2, 3]
    );
    let missing = s
        .append_message(NewMessage {
            room_id: sb_core::RoomId::new_at(UnixMillis(1)),
            ..send(ann, "x")
        })
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound)));

    // Search: words in any order, only in rooms the user belongs to, punctuation is literal.
    let found = s.search(ann, "of BODY m3", None, 10).await.unwrap();
    assert_eq!(
        found.iter().map(|(m, _)| m.seq).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(found[0].1, sb_core::RoomRole::Owner);
    assert!(
        s.search(cat, "body", None, 10).await.unwrap().is_empty(),
        "not a member"
    );
    assert!(
        s.search(ann, "\"unbalanced AND (", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.search(ben, "body", Some(room.id), 2).await.unwrap().len(),
        2
    );

    // Attachments belong to a room and ride on messages.
    let file = AttachmentRecord {
        id: sb_core::AttachmentId::new_at(UnixMillis(3_100)),
        room_id: room.id,
        uploader: ann,
        blob: "ab".repeat(32),
        name: "plan.pdf".into(),
        content_type: "application/pdf".into(),
        size: 1234,
        created_at: UnixMillis(3_100),
    };
    s.insert_attachment(file.clone()).await.unwrap();
    assert_eq!(
        s.attachment(room.id, file.id).await.unwrap(),
        Some(file.clone())
    );
    let other_room = sb_core::RoomId::new_at(UnixMillis(9));
    assert_eq!(
        s.attachment(other_room, file.id).await.unwrap(),
        None,
        "scoped to its room"
    );

    // Edits, deletes and reactions are sequence entries pointing at a message.
    let change = |kind, target, id: &str, body: &str| NewMessage {
        kind,
        target: Some(target),
        body: body.to_string(),
        ..send(ann, id)
    };
    let edit = s
        .append_message(change(MessageKind::Edit, 1, "e1", "body of m1, fixed"))
        .await
        .unwrap();
    assert_eq!(
        (edit.record().seq, edit.record().kind),
        (5, MessageKind::Edit)
    );
    let m1 = s.message(room.id, 1).await.unwrap().unwrap();
    assert_eq!(
        (m1.body.as_str(), m1.edited_at.is_some()),
        ("body of m1, fixed", true)
    );
    assert_eq!(
        s.search(ann, "fixed", None, 10).await.unwrap().len(),
        1,
        "search sees the edit"
    );
    s.append_message(change(MessageKind::Reaction, 1, "r1", "👍"))
        .await
        .unwrap();
    s.append_message(change(MessageKind::Delete, 1, "d1", ""))
        .await
        .unwrap();
    let m1 = s.message(room.id, 1).await.unwrap().unwrap();
    assert_eq!((m1.body.as_str(), m1.deleted), ("", true), "tombstone");
    let edit_entry = s.message(room.id, 5).await.unwrap().unwrap();
    assert_eq!(
        edit_entry.body, "",
        "a delete also blanks the message's edits"
    );
    assert!(s.search(ann, "fixed", None, 10).await.unwrap().is_empty());
    let again = s
        .append_message(change(MessageKind::Edit, 1, "e2", "resurrect"))
        .await;
    assert!(
        matches!(again, Err(StoreError::NotFound)),
        "deleted messages cannot be edited"
    );
    let on_reaction = s
        .append_message(change(MessageKind::Reaction, 6, "r2", "👍"))
        .await;
    assert!(
        matches!(on_reaction, Err(StoreError::NotFound)),
        "targets are messages only"
    );
    assert_eq!(
        s.room_access(room.id, ann)
            .await
            .unwrap()
            .unwrap()
            .room
            .last_seq,
        7,
        "failed appends take no sequence number"
    );

    // Read markers only move forward and show in the member's room list.
    assert_eq!(
        s.mark_read(room.id, ann, 3, UnixMillis(3_500))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        s.mark_read(room.id, ann, 2, UnixMillis(3_501))
            .await
            .unwrap(),
        3,
        "never back"
    );
    let mine = s.rooms_of(ann).await.unwrap();
    assert_eq!((mine[0].read_seq, mine[0].room.last_seq), (3, 7));
    assert_eq!(s.rooms_of(ben).await.unwrap()[0].read_seq, 0, "never read");
    let markers = s.read_markers(room.id).await.unwrap();
    assert_eq!(
        markers
            .iter()
            .map(|m| (m.username.as_str(), m.seq))
            .collect::<Vec<_>>(),
        vec![("ann", 3)]
    );

    // Co-members and last seen.
    assert_eq!(s.co_members(ben).await.unwrap(), vec![ann]);
    assert!(s.co_members(cat).await.unwrap().is_empty());
    s.set_last_seen(ben, UnixMillis(3_900)).await.unwrap();
    let seen: Vec<_> = s
        .members(room.id)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.last_seen_at)
        .collect();
    assert_eq!(seen, vec![None, Some(UnixMillis(3_900))]);

    s.ban(room.id, ben, ann, UnixMillis(4_000)).await.unwrap();
    let access = s.room_access(room.id, ben).await.unwrap().unwrap();
    assert_eq!((access.role, access.banned), (None, true));
    assert_eq!(add(ben, 10).await.unwrap(), MemberChange::Banned);
    assert!(!s.remove_member(room.id, ben).await.unwrap());

    let (dm, created) = s
        .direct_room(
            ann,
            cat,
            sb_core::RoomId::new_at(UnixMillis(5_000)),
            UnixMillis(5_000),
        )
        .await
        .unwrap();
    assert!(created);
    let (same, created) = s
        .direct_room(
            cat,
            ann,
            sb_core::RoomId::new_at(UnixMillis(5_001)),
            UnixMillis(5_001),
        )
        .await
        .unwrap();
    assert_eq!(
        (same.id, created),
        (dm.id, false),
        "one direct room per pair"
    );
    assert_eq!(s.members(dm.id).await.unwrap().len(), 2);
    let ann_rooms: Vec<_> = s
        .rooms_of(ann)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.room.id)
        .collect();
    assert_eq!(ann_rooms, vec![room.id, dm.id]);
    let public: Vec<_> = s
        .public_rooms()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(public, vec![room.id], "direct rooms are never public");

    // A message carries its attachments.
    let with_file = s
        .append_message(NewMessage {
            attachments: vec![file.id],
            ..send(ann, "with-file")
        })
        .await
        .unwrap();
    let stored = s
        .message(room.id, with_file.record().seq)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.attachments, vec![file.id]);

    // MLS: key packages are handed out once; a device with none left gives its last resort.
    assert_eq!(
        s.add_key_packages(
            ben,
            "phone",
            vec![b"kp1".to_vec(), b"kp2".to_vec()],
            Some(b"lr".to_vec()),
            10
        )
        .await
        .unwrap(),
        2
    );
    s.add_key_packages(ben, "laptop", vec![b"kp3".to_vec()], None, 10)
        .await
        .unwrap();
    let first = s.claim_key_packages(ben).await.unwrap();
    assert_eq!(
        first,
        vec![
            ("laptop".to_string(), b"kp3".to_vec()),
            ("phone".to_string(), b"kp1".to_vec())
        ]
    );
    let second = s.claim_key_packages(ben).await.unwrap();
    assert_eq!(
        second,
        vec![("phone".to_string(), b"kp2".to_vec())],
        "laptop has none and no last resort"
    );
    for _ in 0..2 {
        assert_eq!(
            s.claim_key_packages(ben).await.unwrap(),
            vec![("phone".to_string(), b"lr".to_vec())]
        );
    }
    assert_eq!(
        s.add_key_packages(ben, "phone", (0..5).map(|i| vec![i]).collect(), None, 3)
            .await
            .unwrap(),
        3,
        "bounded per device"
    );

    // Handshakes: one per epoch, in order; a stale epoch is refused and stores nothing.
    let welcome = |w: &[u8]| NewWelcome {
        user: cat,
        device: "desk".into(),
        welcome: w.to_vec(),
    };
    assert_eq!(
        s.append_handshake(
            room.id,
            0,
            ann,
            b"commit-0".to_vec(),
            vec![welcome(b"w0")],
            UnixMillis(6_000)
        )
        .await
        .unwrap(),
        HandshakeOutcome::Accepted
    );
    assert_eq!(
        s.append_handshake(
            room.id,
            0,
            ben,
            b"commit-0b".to_vec(),
            vec![welcome(b"lost")],
            UnixMillis(6_001)
        )
        .await
        .unwrap(),
        HandshakeOutcome::Stale { current: 1 }
    );
    s.append_handshake(
        room.id,
        1,
        ann,
        b"commit-1".to_vec(),
        vec![],
        UnixMillis(6_002),
    )
    .await
    .unwrap();
    let log: Vec<_> = s
        .handshakes_after(room.id, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.epoch, h.message))
        .collect();
    assert_eq!(
        log,
        vec![(0, b"commit-0".to_vec()), (1, b"commit-1".to_vec())]
    );
    assert_eq!(s.handshakes_after(room.id, 1, 10).await.unwrap().len(), 1);
    let w = s.take_welcomes(cat, "desk").await.unwrap();
    assert_eq!(
        w.iter().map(|w| w.welcome.clone()).collect::<Vec<_>>(),
        vec![b"w0".to_vec()],
        "the stale commit's Welcome was not queued"
    );
    assert!(
        s.take_welcomes(cat, "desk").await.unwrap().is_empty(),
        "taken once"
    );
}

/// The files part of the suite: spaces, uploads, commits with compare-and-set, versions, the
/// change feed.
pub async fn run_files<S: Store + crate::files::FilesStore>(s: &S) {
    use crate::files::*;
    use sb_core::{FileId, SpaceId, UploadId};
    let ann = user("fay", Role::User, 5_000);
    s.create_user(ann.clone(), Admission::Open, UnixMillis(5_000))
        .await
        .unwrap();
    let at = |t: i64| UnixMillis(t);
    let home = s
        .personal_space(ann.id, SpaceId::new_at(at(6_000)), at(6_000))
        .await
        .unwrap();
    let again = s
        .personal_space(ann.id, SpaceId::new_at(at(6_001)), at(6_001))
        .await
        .unwrap();
    assert_eq!(home, again, "one personal space per user");
    assert_eq!(s.space(home.id).await.unwrap(), Some(home.clone()));

    let chunk = |b: u8, len: u32| ChunkRef { id: [b; 32], len };
    let upload =
        |id: UploadId, path: &str, base: Option<i64>, chunks: Vec<ChunkRef>| UploadRecord {
            id,
            space_id: home.id,
            path: path.into(),
            base_version: base,
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            blake3: format!("{:02x}", chunks.len()),
            chunks,
            created_by: ann.id,
            device: "laptop".into(),
            created_at: at(7_000),
            expires_at: at(100_000),
        };
    let u1 = UploadId::new_at(at(7_000));
    s.create_upload(upload(
        u1,
        "/docs/a.txt",
        Some(0),
        vec![chunk(1, 10), chunk(2, 5)],
    ))
    .await
    .unwrap();
    assert_eq!(s.upload(u1).await.unwrap().unwrap().chunks.len(), 2);
    let (f, v) = s
        .commit_upload(u1, FileId::new_at(at(7_100)), at(7_100))
        .await
        .unwrap();
    assert_eq!((f.head, f.size, v.version), (1, 15, 1));
    assert!(
        s.upload(u1).await.unwrap().is_none(),
        "an upload is consumed"
    );
    assert!(matches!(
        s.commit_upload(u1, FileId::new_at(at(7_101)), at(7_101))
            .await,
        Err(CommitError::NoUpload)
    ));

    // A second version based on the first; then a stale one is refused.
    let u2 = UploadId::new_at(at(8_000));
    s.create_upload(upload(
        u2,
        "/docs/a.txt",
        Some(1),
        vec![chunk(1, 10), chunk(3, 7)],
    ))
    .await
    .unwrap();
    let u3 = UploadId::new_at(at(8_001));
    s.create_upload(upload(u3, "/docs/a.txt", Some(1), vec![chunk(4, 1)]))
        .await
        .unwrap();
    let (f2, _) = s
        .commit_upload(u2, FileId::new_at(at(8_100)), at(8_100))
        .await
        .unwrap();
    assert_eq!((f2.id, f2.head, f2.size), (f.id, 2, 17));
    match s
        .commit_upload(u3, FileId::new_at(at(8_200)), at(8_200))
        .await
    {
        Err(CommitError::Conflict { base, current }) => assert_eq!((base, current), (1, 2)),
        other => panic!("{other:?}"),
    }
    assert!(
        s.upload(u3).await.unwrap().is_some(),
        "a refused upload stays"
    );
    let vs = s.versions(f.id).await.unwrap();
    assert_eq!(vs.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(vs[0].chunks, vec![chunk(1, 10), chunk(3, 7)]);
    assert_eq!(s.version(f.id, 1).await.unwrap().unwrap().size, 15);

    // Listing by folder prefix, and the change feed in order.
    let u4 = UploadId::new_at(at(9_000));
    s.create_upload(upload(u4, "/docs2/b.txt", None, vec![chunk(5, 3)]))
        .await
        .unwrap();
    s.commit_upload(u4, FileId::new_at(at(9_100)), at(9_100))
        .await
        .unwrap();
    let docs = s.list_files(home.id, "/docs/", false, 100).await.unwrap();
    assert_eq!(
        docs.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["/docs/a.txt"]
    );
    assert_eq!(
        s.list_files(home.id, "/", false, 100).await.unwrap().len(),
        2
    );
    let feed = s.changes(home.id, 0, 100).await.unwrap();
    assert_eq!(
        feed.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(feed[2].path, "/docs2/b.txt");
    assert_eq!((feed[1].version, feed[1].size), (2, 17), "{feed:?}");
    assert_eq!(feed[1].blake3, vs[0].blake3);
    assert_eq!(s.changes(home.id, 2, 100).await.unwrap().len(), 1);

    // Expired uploads are pruned.
    assert_eq!(s.prune_uploads(at(200_000)).await.unwrap(), 1);
    assert!(s.upload(u3).await.unwrap().is_none());

    // Trash and back; a trashed file is not listed but keeps its versions. Trashing with an
    // expected version that is no longer the head changes nothing.
    assert!(matches!(
        s.trash_file(home.id, "/docs/a.txt", at(9_999), Some(1))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        s.file_by_path(home.id, "/docs/a.txt")
            .await
            .unwrap()
            .unwrap()
            .deleted_at
            .is_none()
    );
    let t = s
        .trash_file(home.id, "/docs/a.txt", at(10_000), Some(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.deleted_at, Some(at(10_000)));
    assert!(
        s.trash_file(home.id, "/docs/a.txt", at(10_001), None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.list_files(home.id, "/docs/", false, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_files(home.id, "/docs/", true, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.versions(f.id).await.unwrap().len(), 2);
    let back = s
        .untrash_file(home.id, "/docs/a.txt", at(10_100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((back.deleted_at, back.head), (None, 2));
    let feed = s.changes(home.id, 3, 100).await.unwrap();
    assert_eq!(
        feed.iter().map(|c| c.deleted).collect::<Vec<_>>(),
        vec![true, false]
    );

    // Moving a folder moves what is under it, and never over another file.
    let moved = s
        .move_files(home.id, "/docs", "/archive/docs", at(11_000))
        .await
        .unwrap();
    assert_eq!(
        moved.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
        vec!["/archive/docs/a.txt"]
    );
    assert_eq!(moved[0].id, f.id, "the same file, renamed");
    assert!(
        s.file_by_path(home.id, "/docs/a.txt")
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        s.move_files(home.id, "/docs2/b.txt", "/archive/docs/a.txt", at(11_100))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        s.move_files(home.id, "/nothing", "/x", at(11_200))
            .await
            .unwrap()
            .is_empty()
    );
    // A space made to share, shared read-only, then read-write, then not at all.
    let gus = user("gus", Role::User, 12_000);
    s.create_user(gus.clone(), Admission::Open, at(12_000))
        .await
        .unwrap();
    let team = SpaceRecord {
        id: SpaceId::new_at(at(12_100)),
        name: "team".into(),
        owner: ann.id,
        personal: false,
        created_at: at(12_100),
    };
    s.create_space(team.clone()).await.unwrap();
    assert_eq!(s.space_member(team.id, gus.id).await.unwrap(), None);
    s.set_space_member(team.id, gus.id, Some(false))
        .await
        .unwrap();
    assert_eq!(s.space_member(team.id, gus.id).await.unwrap(), Some(false));
    s.set_space_member(team.id, gus.id, Some(true))
        .await
        .unwrap();
    assert_eq!(s.space_member(team.id, gus.id).await.unwrap(), Some(true));
    let gus_sees = s.spaces_for(gus.id).await.unwrap();
    assert_eq!(gus_sees, vec![(team.clone(), Some(true))]);
    let ann_sees = s.spaces_for(ann.id).await.unwrap();
    assert_eq!(ann_sees, vec![(home.clone(), None), (team.clone(), None)]);
    s.set_space_member(team.id, gus.id, None).await.unwrap();
    assert!(s.spaces_for(gus.id).await.unwrap().is_empty());

    // Retention: old versions beyond the newest go, then what the trash holds; the chunks
    // still referenced are those of what is left.
    let mut refs = s.referenced_chunks().await.unwrap();
    refs.sort();
    assert_eq!(refs, vec![[1; 32], [2; 32], [3; 32], [5; 32]]);
    assert_eq!(s.prune_versions(1, at(1_000_000)).await.unwrap(), 1);
    assert_eq!(
        s.versions(f.id).await.unwrap().len(),
        1,
        "the newest is kept"
    );
    assert_eq!(s.prune_versions(1, at(1_000_000)).await.unwrap(), 0);
    let mut refs = s.referenced_chunks().await.unwrap();
    refs.sort();
    assert_eq!(
        refs,
        vec![[1; 32], [3; 32], [5; 32]],
        "chunk 2 was only in version 1"
    );
    s.trash_file(home.id, "/docs2/b.txt", at(13_000), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.purge_trash(at(12_999)).await.unwrap(), 0, "not yet");
    assert_eq!(s.purge_trash(at(13_001)).await.unwrap(), 1);
    assert!(
        s.file_by_path(home.id, "/docs2/b.txt")
            .await
            .unwrap()
            .is_none()
    );
    assert!(!s.referenced_chunks().await.unwrap().contains(&[5; 32]));
}

/// The devices registry: names are unique, a rotated secret replaces the old one, a revoked
/// device stays revoked and cannot get a new secret.
pub async fn run_devices<S: Store + crate::devices::DevicesStore>(s: &S) {
    use crate::devices::*;
    use sb_core::DeviceId;
    let owner = user("dev-owner", Role::User, 20_000);
    s.create_user(owner.clone(), Admission::Open, UnixMillis(20_000))
        .await
        .unwrap();
    let d = DeviceRecord {
        id: DeviceId::new_at(UnixMillis(20_001)),
        name: "thermo-1".into(),
        group: "sensors".into(),
        tags: vec![("floor".into(), "2".into())],
        secret_hash: [7; 32],
        owner: owner.id,
        created_at: UnixMillis(20_001),
        revoked_at: None,
        last_seen_at: None,
        health: None,
        health_at: None,
    };
    s.create_device(d.clone()).await.unwrap();
    let dup = DeviceRecord {
        id: DeviceId::new_at(UnixMillis(20_002)),
        ..d.clone()
    };
    assert!(matches!(
        s.create_device(dup).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.device(d.id).await.unwrap().unwrap(), d);
    assert_eq!(
        s.device_by_name("thermo-1").await.unwrap().unwrap().id,
        d.id
    );
    s.set_device_secret(d.id, [8; 32]).await.unwrap();
    s.device_seen(d.id, UnixMillis(20_100)).await.unwrap();
    let got = s.device(d.id).await.unwrap().unwrap();
    assert_eq!(
        (got.secret_hash, got.last_seen_at),
        ([8; 32], Some(UnixMillis(20_100)))
    );
    s.device_health(d.id, r#"{"ok":true}"#.into(), UnixMillis(20_150))
        .await
        .unwrap();
    let got = s.device(d.id).await.unwrap().unwrap();
    assert_eq!(
        (got.health.as_deref(), got.health_at),
        (Some(r#"{"ok":true}"#), Some(UnixMillis(20_150)))
    );
    s.set_device_cert(d.id, "c1".into(), UnixMillis(20_160), UnixMillis(99_000))
        .await
        .unwrap();
    s.set_device_cert(d.id, "c2".into(), UnixMillis(20_170), UnixMillis(99_000))
        .await
        .unwrap();
    assert_eq!(s.device_by_cert("c1").await.unwrap(), None, "replaced");
    assert_eq!(
        s.device_by_cert("c2").await.unwrap(),
        Some((d.id, UnixMillis(99_000)))
    );
    s.revoke_device(d.id, UnixMillis(20_200)).await.unwrap();
    s.revoke_device(d.id, UnixMillis(20_300)).await.unwrap();
    assert_eq!(
        s.device(d.id).await.unwrap().unwrap().revoked_at,
        Some(UnixMillis(20_200)),
        "revoked once"
    );
    assert!(matches!(
        s.set_device_secret(d.id, [9; 32]).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.devices().await.unwrap().len(), 1);

    // A client certificate: the newest replaces the one before; none for a revoked device.
    assert!(matches!(
        s.set_device_cert(d.id, "aa".into(), UnixMillis(1), UnixMillis(9))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.device_by_cert("aa").await.unwrap(), None);

    // Firmware and a rollout over the device.
    let fw = FirmwareRecord {
        version: "1.0.0".into(),
        size: 3,
        sha256: "ab".into(),
        blob: [1; 32],
        signature: "cd".into(),
        public_key: "ef".into(),
        created_by: owner.id,
        created_at: UnixMillis(20_400),
    };
    s.create_firmware(fw.clone()).await.unwrap();
    assert!(matches!(
        s.create_firmware(fw.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.firmware("1.0.0").await.unwrap(), Some(fw));
    let r = RolloutRecord {
        id: sb_core::RolloutId::new_at(UnixMillis(20_500)),
        version: "1.0.0".into(),
        group: "sensors".into(),
        state: "running".into(),
        batch_size: 1,
        max_failures: 0,
        step_timeout_ms: 60_000,
        current_batch: 0,
        reason: None,
        created_by: owner.id,
        created_at: UnixMillis(20_500),
        updated_at: UnixMillis(20_500),
    };
    let t = RolloutTarget {
        rollout_id: r.id,
        device_id: d.id,
        name: d.name.clone(),
        batch: 0,
        state: "pending".into(),
        reason: None,
        since: UnixMillis(20_500),
    };
    s.create_rollout(r.clone(), vec![t.clone()]).await.unwrap();
    assert_eq!(
        s.rollout(r.id).await.unwrap(),
        Some((r.clone(), vec![t.clone()]))
    );
    let halted = RolloutRecord {
        state: "halted".into(),
        reason: Some("1 failed".into()),
        updated_at: UnixMillis(20_600),
        max_failures: 3,
        ..r.clone()
    };
    let failed = RolloutTarget {
        state: "failed".into(),
        reason: Some("signature".into()),
        since: UnixMillis(20_600),
        ..t.clone()
    };
    s.update_rollout(halted.clone(), vec![failed.clone()])
        .await
        .unwrap();
    assert_eq!(
        s.open_rollouts().await.unwrap(),
        vec![(halted.clone(), vec![failed.clone()])]
    );
    assert_eq!(s.rollouts().await.unwrap(), vec![halted.clone()]);
    let done = RolloutRecord {
        state: "cancelled".into(),
        ..halted
    };
    s.update_rollout(done, vec![]).await.unwrap();
    assert!(s.open_rollouts().await.unwrap().is_empty());
    let unknown = RolloutRecord {
        id: sb_core::RolloutId::new_at(UnixMillis(20_700)),
        ..r
    };
    assert!(matches!(
        s.update_rollout(unknown, vec![]).await,
        Err(StoreError::NotFound)
    ));
}

async fn dashboards_are_per_user_and_bounded(s: &dyn Store) {
    let alice = s.user_by_username("alice").await.unwrap().unwrap();
    let admin = s.user_count().await.unwrap();
    assert!(admin > 1, "the earlier steps made more than one user");
    let d = |name: &str, body: &str, at: i64| DashboardRecord {
        user_id: alice.id,
        name: name.into(),
        body: body.into(),
        updated_at: UnixMillis(at),
    };
    assert!(s.put_dashboard(d("ops", "{}", 1), 2).await.unwrap());
    assert!(s.put_dashboard(d("net", "{}", 2), 2).await.unwrap());
    assert!(
        !s.put_dashboard(d("third", "{}", 3), 2).await.unwrap(),
        "a third dashboard is beyond the limit"
    );
    assert!(
        s.put_dashboard(d("ops", r#"{"v":2}"#, 4), 2).await.unwrap(),
        "replacing one is not adding one"
    );
    let got = s.dashboards(alice.id).await.unwrap();
    assert_eq!(got, vec![d("net", "{}", 2), d("ops", r#"{"v":2}"#, 4)]);
    let someone_else = UserId::new_at(UnixMillis(5));
    assert!(s.dashboards(someone_else).await.unwrap().is_empty());
    assert!(!s.delete_dashboard(someone_else, "ops").await.unwrap());
    assert!(s.delete_dashboard(alice.id, "ops").await.unwrap());
    assert_eq!(s.dashboards(alice.id).await.unwrap().len(), 1);
}
