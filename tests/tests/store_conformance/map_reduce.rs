//! Map-reduce: a run maps items into children (none twice, within the budget), the job waits
//! for them, its reduce step reads their results and ends the job with its own outcome.

use lts_core::model::MapReduce;
use lts_core::transition::{MapBatch, Refusal};
use lts_tracker::store::MapOutcome;

use super::*;

fn batch(token: &str, first_index: u32, items: &[&str]) -> MapBatch {
    MapBatch {
        token: token.into(),
        first_index,
        items: items.iter().map(|i| i.to_string()).collect(),
    }
}

pub async fn a_map_reduce_job_runs_its_children_then_its_reduce_step(store: Arc<dyn JobStore>) {
    let mut spec = JobSpec::new("words", "mr");
    spec.map_reduce = Some(MapReduce {
        reduce: true,
        max_children: Some(4),
    });
    let job_id = id(&store.submit(vec![spec], NOW).await.unwrap()[0]);
    let root = store
        .claim(claim("mr", "w1", 1, NOW))
        .await
        .unwrap()
        .remove(0);
    let token = root.token.clone();
    let mapped = store
        .map(&job_id, batch(&token, 0, &["a", "bb", "ccc"]), NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        mapped,
        MapOutcome::Accepted {
            node_group: "mr".into(),
            created: 3
        }
    );
    // The same map again (a resent call) makes no child twice; past the budget is refused,
    // and so is a stale lease.
    let again = store
        .map(&job_id, batch(&token, 0, &["a", "bb", "ccc"]), NOW + 2)
        .await
        .unwrap();
    assert!(
        matches!(again, MapOutcome::Accepted { created: 0, .. }),
        "{again:?}"
    );
    let over = store
        .map(&job_id, batch(&token, 3, &["d", "e"]), NOW + 2)
        .await
        .unwrap();
    assert_eq!(over, MapOutcome::Refused(Refusal::TooManyChildren(4)));
    let stale = store
        .map(&job_id, batch("nope", 3, &["d"]), NOW + 2)
        .await
        .unwrap();
    assert_eq!(stale, MapOutcome::Refused(Refusal::StaleLease));
    // The run ends, having mapped 3: the job waits for them.
    let mut ok = done(&job_id, &token, Outcome::Success, NOW + 3);
    ok.mapped = 3;
    assert!(matches!(
        store.complete(ok).await.unwrap(),
        CompleteOutcome::Accepted { .. }
    ));
    let p = store
        .get(JobKey::Id(job_id.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(p.state, JobState::Running, "{p:?}");
    let children = store.claim(claim("mr", "w2", 10, NOW + 4)).await.unwrap();
    assert_eq!(children.len(), 3);
    for (i, c) in children.iter().enumerate() {
        let outcome = if i == 0 {
            Outcome::Failed
        } else {
            Outcome::Success
        };
        let mut r = done(&c.job.job_id, &c.token, outcome, NOW + 5);
        r.message = format!("len {}", c.job.spec.params["map.item"].len());
        assert!(matches!(
            store.complete(r).await.unwrap(),
            CompleteOutcome::Accepted { .. }
        ));
    }
    // The reduce step is queued once; it reads the children's results.
    let mut steps = store.claim(claim("mr", "w3", 10, NOW + 6)).await.unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let step = steps.remove(0);
    assert_eq!(step.job.spec.task_id, "words#reduce");
    let results = store
        .map_results(&step.job.job_id, &step.token, None, 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results.len(), 2, "a page of 2");
    let rest = store
        .map_results(
            &step.job.job_id,
            &step.token,
            Some(results[1].job_id.clone()),
            10,
        )
        .await
        .unwrap()
        .unwrap();
    let mut all: Vec<_> = results.into_iter().chain(rest).collect();
    all.sort_by_key(|r| r.index);
    let seen: Vec<(&str, &str)> = all
        .iter()
        .map(|r| (r.item.as_str(), r.message.as_str()))
        .collect();
    assert_eq!(seen.len(), 3);
    assert!(seen.contains(&("bb", "len 2")), "{seen:?}");
    assert_eq!(
        all.iter().filter(|r| r.state == JobState::Failed).count(),
        1
    );
    let refused = store
        .map_results(&step.job.job_id, "nope", None, 10)
        .await
        .unwrap();
    assert_eq!(refused, Err(Refusal::StaleLease));
    let mut end = done(&step.job.job_id, &step.token, Outcome::Success, NOW + 7);
    end.message = "2 words".into();
    store.complete(end).await.unwrap();
    let p = store.get(JobKey::Id(job_id)).await.unwrap().unwrap();
    assert_eq!(p.state, JobState::Succeeded, "{p:?}");
    assert_eq!(
        p.last_message.as_deref(),
        Some("reduce SUCCESS after 3 children (2 succeeded, 1 failed): 2 words")
    );
}
