//! Listings, counts, retention, feedback and the master fence.

use super::*;

/// Listings filter on the submitting node group and the schedule kind in the store, for
/// unfinished and finished jobs alike, and page through what matches.
pub async fn list_by_submit_group_and_schedule_kind(store: Arc<dyn JobStore>) {
    let spec = |i: usize| {
        let mut spec = JobSpec::new(format!("f-{i:02}"), "g");
        spec.submit_node_group = if i.is_multiple_of(2) { "even" } else { "odd" }.into();
        if i.is_multiple_of(3) {
            spec = spec.schedule(Schedule::Cron {
                expression: "0 0 * * * *".into(),
                time_zone: None,
            });
        }
        spec
    };
    let ids: Vec<String> = store
        .submit((0..12).map(spec).collect(), NOW)
        .await
        .unwrap()
        .iter()
        .map(id)
        .collect();
    // Two of them finish: one even one-off, one odd one-off.
    for i in [2, 5] {
        let c = store
            .cancel(JobKey::Id(ids[i].clone()), NOW + 1)
            .await
            .unwrap();
        assert!(matches!(c, CancelOutcome::Cancelled(_)), "{c:?}");
    }
    let list = |submit: Option<&str>, kind: Option<ScheduleKind>, limit: usize| {
        let store = store.clone();
        let submit = submit.map(str::to_string);
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .list(ListFilter {
                        submit_node_group: submit.clone(),
                        schedule_kind: kind,
                        limit,
                        after: after.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                assert!(page.jobs.len() <= limit);
                seen.extend(page.jobs.iter().map(|j| j.spec.task_id.clone()));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break seen,
                }
            }
        }
    };
    let names = |is: &[usize]| is.iter().map(|i| format!("f-{i:02}")).collect::<Vec<_>>();
    assert_eq!(
        list(Some("even"), None, 4).await,
        names(&[0, 2, 4, 6, 8, 10]),
        "every job the group submitted, finished ones too"
    );
    assert_eq!(
        list(None, Some(ScheduleKind::Cron), 100).await,
        names(&[0, 3, 6, 9])
    );
    assert_eq!(
        list(Some("odd"), Some(ScheduleKind::Now), 1).await,
        names(&[1, 5, 7, 11])
    );
    assert!(
        list(Some("nobody"), None, 100).await.is_empty(),
        "no job of another group"
    );
    assert!(
        list(None, Some(ScheduleKind::Repeat), 100).await.is_empty(),
        "no repeat job"
    );
}

/// Cancel, list with filters and pages, stats, due counts, retention.
pub async fn cancel_list_stats_retention(store: Arc<dyn JobStore>) {
    let ids: Vec<String> = store
        .submit(
            (0..25)
                .map(|i| JobSpec::new(format!("job-{i:02}"), if i < 20 { "g" } else { "h" }))
                .collect(),
            NOW,
        )
        .await
        .unwrap()
        .iter()
        .map(id)
        .collect();
    let c = store
        .cancel(JobKey::Id(ids[0].clone()), NOW + 1)
        .await
        .unwrap();
    assert!(matches!(c, CancelOutcome::Cancelled(ref j) if j.state == JobState::Cancelled));
    let c = store
        .cancel(JobKey::Id(ids[0].clone()), NOW + 2)
        .await
        .unwrap();
    assert!(matches!(c, CancelOutcome::AlreadyFinished(_)));
    assert_eq!(
        store.cancel(JobKey::Id("nope".into()), NOW).await.unwrap(),
        CancelOutcome::NotFound
    );
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(ListFilter {
                node_group: Some("g".into()),
                limit: 7,
                after: after.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.jobs.iter().map(|j| j.job_id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids[..20].to_vec(), "all of g, in submit order, once");
    let cancelled = store
        .list(ListFilter {
            state: Some(JobState::Cancelled),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.jobs.len(), 1);
    let prefixed = store
        .list(ListFilter {
            task_id_prefix: Some("job-2".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(prefixed.jobs.len(), 5);
    let s = store.stats(Some("g")).await.unwrap();
    assert_eq!((s.queued, s.cancelled), (19, 1));
    let s = store.stats(None).await.unwrap();
    assert_eq!(s.queued, 24);
    // Due now: the queued jobs whose time has come, per node group (what autoscaling reads).
    assert_eq!(store.due_count("g", NOW).await.unwrap(), 19);
    assert_eq!(store.due_count("h", NOW + 10).await.unwrap(), 5);
    assert_eq!(
        store.due_count("g", NOW - 1).await.unwrap(),
        0,
        "not yet due"
    );
    assert_eq!(store.due_count("nobody", NOW).await.unwrap(), 0);
    let backlog = store.backlog(NOW, 100).await.unwrap();
    let counts: Vec<(&str, u64, u64, u64)> = backlog
        .iter()
        .map(|b| (b.node_group.as_str(), b.queued, b.due, b.running))
        .collect();
    assert_eq!(counts, [("g", 19, 19, 0), ("h", 5, 5, 0)]);
    let early = store.backlog(NOW - 1, 100).await.unwrap();
    assert_eq!(early[0].due, 0, "not yet due");
    assert_eq!(store.backlog(NOW, 1).await.unwrap().len(), 1, "bounded");
    let removed = store.enforce_retention(NOW + 100).await.unwrap();
    assert!(removed > 0);
    assert!(
        store
            .get(JobKey::Id(ids[0].clone()))
            .await
            .unwrap()
            .is_none()
    );
}

/// Pending feedback stays until acknowledged or the retention period is over, and pages by
/// its id.
pub async fn feedback_until_acknowledged(store: Arc<dyn JobStore>) {
    let spec = JobSpec::new("fb", "g").feedback_to("clients");
    let job_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let l = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let r = store
        .complete(done(&job_id, &l.token, Outcome::Success, NOW + 5))
        .await
        .unwrap();
    assert!(
        matches!(r, CompleteOutcome::Accepted { feedback_group: Some(ref g), ref submit_node_group, .. } if g == "clients" && submit_node_group == "clients")
    );
    assert!(
        store
            .pending_feedback("others", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let items = store.pending_feedback("clients", None, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(
        (
            item.job.job_id.as_str(),
            item.outcome,
            item.job.state,
            item.finished_at_ms
        ),
        (
            job_id.as_str(),
            Outcome::Success,
            JobState::Succeeded,
            NOW + 5
        )
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 1);
    store.enforce_retention(NOW + 5).await.unwrap();
    let again = store.pending_feedback("clients", None, 10).await.unwrap();
    assert_eq!(again.len(), 1, "feedback within the retention period stays");
    assert!(
        store
            .pending_feedback("clients", Some(&item.feedback_id), 10)
            .await
            .unwrap()
            .is_empty(),
        "paging after the last item finds nothing"
    );
    // Another group's subscriber cannot acknowledge (and so delete) it.
    store
        .ack_feedback("intruders", vec![item.feedback_id.clone()])
        .await
        .unwrap();
    assert_eq!(
        store
            .pending_feedback("clients", None, 10)
            .await
            .unwrap()
            .len(),
        1,
        "an acknowledgement from another group deletes nothing"
    );
    store
        .ack_feedback("clients", vec![item.feedback_id.clone()])
        .await
        .unwrap();
    assert!(
        store
            .pending_feedback("clients", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 0);

    // Feedback nobody takes is kept for the retention period, then goes.
    let spec = JobSpec::new("fb2", "g").feedback_to("nobody");
    let job_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let l = store
        .claim(claim("g", "w", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    store
        .complete(done(&job_id, &l.token, Outcome::Failed, NOW + 10))
        .await
        .unwrap();
    store.enforce_retention(NOW + 10).await.unwrap();
    assert_eq!(
        store
            .pending_feedback("nobody", None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    store.enforce_retention(NOW + 11).await.unwrap();
    assert!(
        store
            .pending_feedback("nobody", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.stats(None).await.unwrap().pending_feedback, 0);
}

/// Many reads at once all get an answer (they wait for a connection, never fail).
pub async fn many_reads_at_once(store: Arc<dyn JobStore>) {
    let job_id = id(&store
        .submit(vec![JobSpec::new("read", "g")], NOW)
        .await
        .unwrap()[0]);
    let reads: Vec<_> = (0..64)
        .map(|_| {
            let store = store.clone();
            let job_id = job_id.clone();
            tokio::spawn(async move { store.get(JobKey::Id(job_id)).await })
        })
        .collect();
    for r in reads {
        assert!(r.await.unwrap().unwrap().is_some());
    }
}

/// A deposed master's writes are refused once a newer master has acted; a stale fence yields.
pub async fn master_fence(store: Arc<dyn JobStore>) {
    assert!(store.fence(5, "a", NOW).await.unwrap(), "first master");
    assert!(store.fence(5, "a", NOW + 500).await.unwrap(), "same master");
    assert!(
        store.fence(7, "b", NOW + 600).await.unwrap(),
        "newer master"
    );
    assert!(!store.fence(5, "a", NOW + 700).await.unwrap(), "deposed");
    assert!(
        store.fence(7, "b", NOW + 800).await.unwrap(),
        "still the newest"
    );
    let later = NOW + 800 + lts_tracker::store::FENCE_STALE_MS + 1;
    assert!(
        store.fence(1, "c", later).await.unwrap(),
        "a fence nobody renewed yields (a rebuilt ZooKeeper starts epochs again)"
    );
    assert!(!store.fence(0, "d", later + 1).await.unwrap());
}
