//! The rules: what each event does to a job as stored, as a [`Transition`].

use super::*;

/// The transition of a submit that found no unfinished job with the spec's task id: a new
/// queued job `job_id`, due at its first trigger time.
pub fn accept(spec: JobSpec, job_id: String, now_ms: i64) -> Transition {
    let trigger = schedule::first_trigger(&spec, now_ms).unwrap_or(now_ms);
    let mut job = Job::new(job_id, spec);
    job.trigger_time_ms = trigger;
    job.scheduled_fire_ms = job.spec.schedule.is_recurring().then_some(trigger);
    job.fire_count = 1;
    job.created_at_ms = now_ms;
    job.updated_at_ms = now_ms;
    let line = log(&job, now_ms, LogType::Receive, "accepted");
    keep(StoredJob::new(job)).written(Write::Insert, vec![line])
}

/// Applies `event` at `now_ms` to the job as stored; retries are spaced by `retry`.
pub fn apply(
    stored: &StoredJob,
    event: Event,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state.is_final() {
        return match event {
            Event::Submit { spec, new_job_id } => Ok(accept(*spec, new_job_id, now_ms)),
            _ => Err(Refusal::Finished(job.job_id.clone(), job.state)),
        };
    }
    match event {
        Event::Submit { spec, .. } => replace(stored, *spec, now_ms),
        Event::Claim(claim) => claim_job(stored, &claim, now_ms, retry),
        Event::Renew { token, expiry_ms } => {
            stored.leased_with(&token)?;
            let mut after = stored.clone();
            after.job.lease_expiry_ms = Some(capped_expiry(&after.job, expiry_ms));
            Ok(changed(stored, after, Vec::new()))
        }
        Event::Complete(report) => complete(stored, report, now_ms, retry),
        Event::Release(token) => {
            stored.leased_with(&token)?;
            let mut after = requeued(stored, now_ms);
            after.job.attempt = after.job.attempt.saturating_sub(1);
            let note = "handed back by its TaskTracker";
            let line = log(&after.job, now_ms, LogType::Resend, note);
            Ok(changed(stored, after, vec![line]))
        }
        Event::LeaseLost(loss) => lease_lost(stored, loss, now_ms, retry),
        Event::Suspend => suspend(stored, now_ms),
        Event::Resume => resume(stored, now_ms),
        Event::Trigger(instance_id) => {
            if !job.spec.schedule.is_recurring() {
                return Err(Refusal::NotRecurring(job.job_id.clone()));
            }
            let mut instance = accept(
                schedule::instance_spec(&job.spec, now_ms),
                instance_id,
                now_ms,
            );
            instance.job.job.instance_of = Some(job.job_id.clone());
            let mut t = keep(stored.clone());
            t.follow_up = Some(FollowUp {
                job: instance.job,
                logs: instance.logs,
            });
            Ok(t)
        }
        Event::Cancel(cause) => cancel(stored, cause, now_ms),
        Event::ShardsEnded(progress) => shards_ended(stored, progress, now_ms, retry),
        Event::PredecessorsEnded(verdict) => predecessors_ended(stored, verdict, now_ms),
        Event::Map(batch) => map(stored, batch, now_ms),
        Event::ReduceEnded { outcome, message } => {
            reduce_ended(stored, outcome, message, now_ms, retry)
        }
    }
}

/// Whether the job has shard runs, workflow nodes or map children that its cancel, suspend and
/// resume reach: while they run, and — a map-reduce job — while its own run maps them.
fn has_children(job: &Job) -> bool {
    job.waits_for_shards()
        || (job.spec.map_reduce.is_some() && job.shard.is_none() && !job.state.is_final())
}

/// A transition that writes nothing.
fn keep(job: StoredJob) -> Transition {
    Transition {
        job,
        write: Write::Keep,
        logs: Vec::new(),
        feedback: None,
        disposition: None,
        next_fire: NextFire::Unchanged,
        follow_up: None,
        handout: Handout::Nothing,
        cascade: None,
        fan_out: Vec::new(),
    }
}

/// The transition from `before` to `after`. Its fields are found by comparing the two, so what
/// a store writes cannot drift from what the rule decided.
fn changed(before: &StoredJob, after: StoredJob, logs: Vec<LogEntry>) -> Transition {
    let (from, fields) = (before.job.state, Field::changed(before, &after));
    let write = if after.job.state.is_final() {
        Write::Finish { from, fields }
    } else {
        Write::Update { from, fields }
    };
    // A shard run (a workflow node) that ended may be its job's last, and may let its
    // successors run.
    let cascade = match (&after.job.shard, reduce_end(&after.job)) {
        // A map-reduce job's reduce step ends the job, with its own outcome.
        (Some(shard), Some(Event::ReduceEnded { outcome, message })) => {
            Some(Cascade::ReduceEnded {
                parent: shard.of.clone(),
                outcome,
                message,
            })
        }
        (Some(shard), _) if after.job.state.is_final() => Some(Cascade::ShardEnded {
            parent: shard.of.clone(),
            run: Shard::run_of_id(&after.job.job_id).to_string(),
            successors: after
                .job
                .node
                .as_ref()
                .map(|n| n.next.clone())
                .unwrap_or_default(),
        }),
        _ => None,
    };

    let mut t = keep(after).written(write, logs);
    t.cascade = cascade;
    t
}

impl Transition {
    fn written(self, write: Write, logs: Vec<LogEntry>) -> Transition {
        Transition {
            write,
            logs,
            ..self
        }
    }
}

/// A line of `job`'s log, as most are: informational, of its current attempt, by the tracker.
fn log(job: &Job, time_ms: i64, log_type: LogType, message: impl Into<String>) -> LogEntry {
    LogEntry {
        time_ms,
        log_type,
        level: LogLevel::Info,
        message: message.into(),
        attempt: job.attempt,
        job_id: job.job_id.clone(),
        task_id: job.spec.task_id.clone(),
        task_tracker_node_group: job.spec.task_tracker_node_group.clone(),
        node: String::new(),
    }
}

// Private to this module: the exceptions to `log`'s defaults.
impl LogEntry {
    fn with_level(self, level: LogLevel) -> LogEntry {
        LogEntry { level, ..self }
    }

    fn by_node(self, node: &str) -> LogEntry {
        LogEntry {
            node: node.to_string(),
            ..self
        }
    }
}

/// The job leased by `claim`: running, one more attempt. A job claimed ahead of its trigger
/// time starts then: its deadline and its lease count from its start.
fn lease(s: &mut StoredJob, claim: &Claim, now_ms: i64) {
    let ahead = s.job.trigger_time_ms.saturating_sub(now_ms).max(0);
    let starts = now_ms.saturating_add(ahead);
    s.job.state = JobState::Running;
    s.job.attempt += 1;
    s.job.lease_owner = Some(claim.owner.clone());
    s.job.deadline_ms = s
        .job
        .spec
        .timeout_ms
        .map(|t| starts.saturating_add(i64::try_from(t).unwrap_or(i64::MAX)));
    s.job.lease_expiry_ms = Some(capped_expiry(&s.job, claim.expiry_ms.saturating_add(ahead)));
    s.job.updated_at_ms = now_ms;
    s.lease_token = Some(claim.token.clone());
}

/// A lease expiry, kept within [`DEADLINE_GRACE_MS`] of the run's deadline: a TaskTracker
/// that does not end a run past its timeout loses it.
fn capped_expiry(job: &Job, expiry_ms: i64) -> i64 {
    match job.deadline_ms {
        Some(deadline) => expiry_ms.min(deadline.saturating_add(DEADLINE_GRACE_MS)),
        None => expiry_ms,
    }
}

fn sent(job: &Job, claim: &Claim, now_ms: i64) -> LogEntry {
    log(job, now_ms, LogType::Sent, &claim.owner).by_node(&claim.owner)
}

/// The job without its lease, back in its queue — or suspended, if a user asked for that while
/// it ran (the one place that rule lives).
fn requeued(stored: &StoredJob, now_ms: i64) -> StoredJob {
    let mut after = stored.clone();
    after.job.state = if stored.suspend_requested {
        JobState::Suspended
    } else {
        JobState::Queued
    };
    after.job.lease_owner = None;
    after.job.lease_expiry_ms = None;
    after.job.deadline_ms = None;
    after.lease_token = None;
    after.job.updated_at_ms = now_ms;
    after
}

fn replace(stored: &StoredJob, spec: JobSpec, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if !spec.replace_on_exist {
        return Err(Refusal::Duplicate(job.job_id.clone()));
    }
    let mut after = stored.clone();
    // A queued job takes the new trigger time, as a submit of the spec would; a running or
    // suspended one keeps its own, and the new spec applies to what comes after.
    if job.state == JobState::Queued {
        let trigger = schedule::first_trigger(&spec, now_ms).unwrap_or(now_ms);
        after.job.trigger_time_ms = trigger;
        after.job.scheduled_fire_ms = spec.schedule.is_recurring().then_some(trigger);
    }
    after.job.spec = spec;
    // A job whose shards run waits for them as it was submitted.
    if job.waits_for_shards() {
        after.job.spec.shards = job.spec.shards;
        after.job.spec.broadcast = job.spec.broadcast;
        after.job.spec.workflow = job.spec.workflow.clone();
    }
    after.job.updated_at_ms = now_ms;
    let note = if job.state == JobState::Running {
        "replaced by a new submit; applies after the running attempt"
    } else {
        "replaced by a new submit"
    };
    Ok(changed(
        stored,
        after,
        vec![log(job, now_ms, LogType::Update, note)],
    ))
}

fn claim_job(
    stored: &StoredJob,
    claim: &Claim,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state != JobState::Queued {
        return Err(Refusal::NotQueued(job.state));
    }
    if job.trigger_time_ms > claim.due_by_ms.max(now_ms) {
        return Err(Refusal::NotDue(job.trigger_time_ms));
    }
    let fire = job.scheduled_fire_ms.unwrap_or(job.trigger_time_ms);
    let fired = job.fire_count.max(1);
    if schedule::fires_overlapping_instances(&job.spec) {
        return Ok(fire_instance(stored, claim, fire, fired, now_ms));
    }
    let mut after = stored.clone();
    lease(&mut after, claim, now_ms);
    let mut logs = Vec::new();
    // Only the first attempt of a fire can be late (see the module docs).
    if after.job.attempt == 1 {
        match schedule::late_fire(&job.spec, job.trigger_time_ms, fire, fired, now_ms) {
            LateFire::OnTime => {}
            LateFire::CatchUp => {
                // It runs as the fire of now, so its completion does not queue another catch-up.
                after.job.scheduled_fire_ms = Some(now_ms);
                let note = format!("missed fire {}: one catch-up run now", format_ms(fire));
                logs.push(log(job, now_ms, LogType::Update, note));
            }
            LateFire::Skip { next_ms } => return Ok(advance(stored, fire, next_ms, false, now_ms)),
        }
    }
    if let Some(wf) = &job.spec.workflow {
        return Ok(run_workflow(stored, after, logs, wf, now_ms, retry));
    }
    if job.spec.fans_out() {
        let targets = match job.spec.shards {
            Some(n) => vec![None; n as usize],
            // Broadcast: one shard for each connected TaskTracker, the claim's own included.
            None => {
                let mut on: Vec<String> = claim.targets.clone();
                on.push(claim.owner.clone());
                on.sort();
                on.dedup();
                on.truncate(crate::model::MAX_SHARDS as usize);
                on.into_iter().map(Some).collect()
            }
        };
        return Ok(fan_out(stored, after, logs, &targets, now_ms));
    }
    logs.push(sent(&after.job, claim, now_ms));
    let mut t = changed(stored, after, logs);
    t.handout = Handout::Job;
    Ok(t)
}

/// A claimed sharded job runs as shard runs, one for each of `targets` (a broadcast's
/// TaskTracker, or `None`: any): it is running without a lease of its own (an attempt
/// counted), and its shards are queued, due when it was, each its own job.
fn fan_out(
    stored: &StoredJob,
    mut after: StoredJob,
    mut logs: Vec<LogEntry>,
    targets: &[Option<String>],
    now_ms: i64,
) -> Transition {
    let n = targets.len() as u32;
    release_for_shards(&mut after);
    let parent = &after.job;
    let run = Shard::run_of(parent);
    logs.push(log(
        parent,
        now_ms,
        LogType::Sent,
        match parent.spec.broadcast {
            true => format!("runs on {n} TaskTrackers (broadcast)"),
            false => format!("runs as {n} shards"),
        },
    ));
    let mut shards = Vec::with_capacity(n as usize);
    for (index, on) in (0..n).zip(targets) {
        let mut spec = parent.spec.clone();
        spec.task_id = format!("{}#{index}", parent.spec.task_id);
        spec.schedule = crate::Schedule::Now;
        spec.shards = None;
        spec.broadcast = false;
        spec.rely_on_prev_cycle = false;
        spec.replace_on_exist = false;
        spec.concurrency_policy = ConcurrencyPolicy::Allow;
        spec.max_concurrent = None;
        spec.idempotency_key = None;
        // The job's feedback is the job's, not each shard's.
        spec.need_feedback = false;
        let shard = shard_job(parent, &run, index, n, on.clone(), spec, now_ms);
        let note = match on {
            Some(on) => format!("shard {index} of {n} of {}, for {on}", parent.job_id),
            None => format!("shard {index} of {n} of {}", parent.job_id),
        };
        logs.push(log(&shard, now_ms, LogType::Receive, note));
        shards.push(StoredJob::new(shard));
    }
    let mut t = changed(stored, after, logs);
    t.fan_out = shards;
    t
}

/// A job that runs as shards (or workflow nodes) holds no lease of its own.
fn release_for_shards(after: &mut StoredJob) {
    after.job.lease_owner = None;
    after.job.lease_expiry_ms = None;
    after.job.deadline_ms = None;
    after.lease_token = None;
}

/// Shard (or workflow node) `index` of `n` of `parent`'s run `run`, for `on` (a broadcast's
/// TaskTracker) or any: queued, due when its job was, created now.
fn shard_job(
    parent: &Job,
    run: &str,
    index: u32,
    n: u32,
    on: Option<String>,
    spec: JobSpec,
    now_ms: i64,
) -> Job {
    let mut shard = Job::new(Shard::id(run, index), spec);
    shard.trigger_time_ms = parent.trigger_time_ms;
    shard.created_at_ms = now_ms;
    shard.updated_at_ms = now_ms;
    shard.fire_count = 1;
    shard.shard = Some(Shard {
        of: parent.job_id.clone(),
        index,
        count: n,
        on,
    });
    shard
}

/// A claimed workflow runs as its nodes, each a job of its own with the ids and accounting of
/// a shard: it is running without a lease of its own (an attempt counted); its nodes without
/// predecessors are queued, due when it was, and the others wait for theirs. A retry's kept
/// nodes ([`crate::workflow::WorkflowNode::kept_output`]) are written succeeded, and the nodes
/// they let run are judged at once; should nothing be left to run, the workflow ends here.
fn run_workflow(
    stored: &StoredJob,
    mut after: StoredJob,
    mut logs: Vec<LogEntry>,
    wf: &crate::workflow::Workflow,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Transition {
    let n = wf.nodes.len() as u32;
    release_for_shards(&mut after);
    let parent = &after.job;
    let run = Shard::run_of(parent);
    let plan = wf.plan();
    let kept = wf.nodes.iter().filter(|n| n.kept_output.is_some()).count();
    let note = match kept {
        0 => {
            let roots = plan.iter().filter(|p| p.needs.is_empty()).count();
            format!("runs as a workflow of {n} nodes, {roots} of them at once")
        }
        k => format!("runs as a workflow of {n} nodes, {k} of them kept from the run retried"),
    };
    logs.push(log(parent, now_ms, LogType::Sent, note));
    let order = crate::workflow::Workflow::topological_order(&plan);
    let mut built: Vec<Option<Job>> = vec![None; plan.len()];
    let mut node_logs: Vec<Vec<LogEntry>> = vec![Vec::new(); plan.len()];
    for i in order {
        let of = plan[i].clone();
        let index = i as u32;
        let spec = wf.node_spec(i, &parent.spec);
        let mut node = shard_job(parent, &run, index, n, None, spec, now_ms);
        let preds: Vec<&Job> = of
            .needs
            .iter()
            .filter_map(|p| built[p.index as usize].as_ref())
            .collect();
        let all_ended = preds.len() == of.needs.len() && preds.iter().all(|p| p.state.is_final());
        node.node = Some(of.clone());
        let note = if let Some(output) = &wf.nodes[i].kept_output {
            node.state = JobState::Succeeded;
            node.finished_at_ms = Some(now_ms);
            node.last_outcome = Some(Outcome::Success);
            node.last_message = Some(output.clone());
            format!(
                "node {} of workflow {}: kept, it succeeded in the run retried",
                of.name, parent.job_id
            )
        } else if of.needs.is_empty() {
            format!("node {} of workflow {}", of.name, parent.job_id)
        } else if all_ended {
            match crate::workflow::readiness(&node, &preds) {
                Some(Verdict::Run { outputs }) => {
                    node.spec.params.extend(outputs);
                    format!(
                        "node {} of workflow {}; its predecessors were kept",
                        of.name, parent.job_id
                    )
                }
                Some(Verdict::Skip(why)) => {
                    node.state = JobState::Skipped;
                    node.finished_at_ms = Some(now_ms);
                    node.last_message = Some(why.clone());
                    format!("node {} of workflow {}; {why}", of.name, parent.job_id)
                }
                None => format!("node {} of workflow {}", of.name, parent.job_id),
            }
        } else {
            node.state = JobState::Waiting;
            let k = of.needs.len();
            let names: Vec<&str> = of.needs.iter().map(|p| p.name.as_str()).take(5).collect();
            let more = if k > 5 {
                format!(" and {} more", k - 5)
            } else {
                String::new()
            };
            format!(
                "node {} of workflow {}; waits for {}{more}",
                of.name,
                parent.job_id,
                names.join(", ")
            )
        };
        node_logs[i].push(log(&node, now_ms, LogType::Receive, note));
        built[i] = Some(node);
    }
    let nodes: Vec<StoredJob> = built.into_iter().flatten().map(StoredJob::new).collect();
    logs.extend(node_logs.into_iter().flatten());
    if nodes.iter().any(|s| !s.job.state.is_final()) {
        let mut t = changed(stored, after, logs);
        t.fan_out = nodes;
        return t;
    }
    // Nothing left to run (a retry whose other nodes are all skipped): it ends now.
    let mut progress = ShardProgress::default();
    for s in &nodes {
        match s.job.state {
            JobState::Succeeded => progress.succeeded += 1,
            JobState::Skipped => progress.skipped += 1,
            _ => progress.failed += 1,
        }
    }
    let waiting = changed(stored, after, Vec::new()).job;
    let Ok(end) = shards_ended(&waiting, progress, now_ms, retry) else {
        let mut t = changed(stored, waiting, logs);
        t.fan_out = nodes;
        return t;
    };
    logs.extend(end.logs);
    let mut t = changed(stored, end.job, logs);
    (t.feedback, t.disposition, t.next_fire) = (end.feedback, end.disposition, end.next_fire);
    t.fan_out = nodes;
    t
}

/// Every predecessor of a waiting workflow node ended: it is queued, due now (with their
/// outputs in its parameters), or skipped.
fn predecessors_ended(
    stored: &StoredJob,
    verdict: Verdict,
    now_ms: i64,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state != JobState::Waiting {
        return Err(Refusal::NotWaiting(job.state));
    }
    let mut after = stored.clone();
    after.job.updated_at_ms = now_ms;
    let line = match verdict {
        Verdict::Run { outputs } => {
            // A node suspended while it waited (with its workflow, say) stays suspended.
            let (state, what) = match stored.suspend_requested {
                true => (JobState::Suspended, "suspended (a user suspended it)"),
                false => (JobState::Queued, "queued"),
            };
            after.job.state = state;
            after.job.trigger_time_ms = now_ms;
            let note = match outputs.len() {
                0 => format!("its predecessors ended: {what}"),
                k => format!("its predecessors ended: {what}, with {k} of their outputs"),
            };
            after.job.spec.params.extend(outputs);
            log(job, now_ms, LogType::Update, note)
        }
        Verdict::Skip(why) => {
            after.job.state = JobState::Skipped;
            after.job.finished_at_ms = Some(now_ms);
            after.job.last_message = Some(why.clone());
            log(job, now_ms, LogType::Del, why)
        }
    };
    Ok(changed(stored, after, vec![line]))
}

/// Every shard run of a sharded job ended: so did the job's run.
fn shards_ended(
    stored: &StoredJob,
    progress: ShardProgress,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if !job.waits_for_shards() {
        return Err(Refusal::NoShardsRunning);
    }
    if progress.unfinished() > 0 {
        return Err(Refusal::ShardsUnfinished(progress.unfinished()));
    }
    if let Some(MapOf::Parent { children, reducing }) = job.map {
        return children_ended(stored, children, reducing, progress, now_ms, retry);
    }
    let n = progress.succeeded + progress.failed;
    let (outcome, message) = if job.spec.workflow.is_some() {
        workflow_end(&progress)
    } else {
        match progress.failed {
            0 if n == 1 => (Outcome::Success, "its one shard succeeded".to_string()),
            0 => (Outcome::Success, format!("all {n} shards succeeded")),
            failed => (Outcome::Failed, format!("{failed} of {n} shards failed")),
        }
    };
    let note = format!("{outcome}: {message}");
    Ok(ended_for_good(
        stored, outcome, message, note, now_ms, retry,
    ))
}

/// How a workflow whose nodes all ended ends: `SUCCESS` unless a node failed (or was
/// cancelled) with no `failure` or `always` edge out of it.
fn workflow_end(p: &ShardProgress) -> (Outcome, String) {
    let n = p.succeeded + p.failed + p.skipped;
    let mut parts = vec![format!("{} succeeded", p.succeeded)];
    if p.failed > 0 {
        parts.push(match p.handled {
            0 => format!("{} failed", p.failed),
            h => format!("{} failed ({h} handled by an edge)", p.failed),
        });
    }
    if p.skipped > 0 {
        parts.push(format!("{} skipped", p.skipped));
    }
    let tally = format!("{n} nodes ended: {}", parts.join(", "));
    match p.failed.saturating_sub(p.handled) {
        0 => (Outcome::Success, tally),
        k => (
            Outcome::Failed,
            format!(
                "{tally}; {k} failure{} no edge handles",
                if k == 1 { "" } else { "s" }
            ),
        ),
    }
}

/// A claimed recurring job whose instances overlap is not run itself: the instance of its due
/// fire is created and leased in its place, and the job moves on to its next fire at once.
fn fire_instance(stored: &StoredJob, claim: &Claim, fire: i64, fired: u64, now: i64) -> Transition {
    let def = &stored.job;
    let step = schedule::overlap_step(&def.spec, fire, fired, now);
    let policy = def.spec.concurrency_policy;
    let unfinished = claim.unfinished_instances;
    // Why the fire is skipped, if it is: the schedule moves on (or ends), and the log says so.
    let skipped = match (policy, def.spec.max_concurrent) {
        _ if !step.run || unfinished == 0 => None,
        (ConcurrencyPolicy::Forbid, _) => {
            Some("an earlier run is unfinished (concurrency policy forbid)".to_string())
        }
        (ConcurrencyPolicy::Allow, Some(most)) if unfinished >= most => Some(format!(
            "{unfinished} earlier run{} unfinished, as many as max_concurrent ({most}) allows",
            if unfinished == 1 { " is" } else { "s are" }
        )),
        _ => None,
    };
    if let Some(why) = skipped {
        let mut t = advance(stored, fire, step.next_ms, false, now);
        let then = match step.next_ms {
            Some(next) => format!("next fire {}", format_ms(next)),
            None => "the last of its schedule".into(),
        };
        let note = format!(
            "skipped fire {}: {why}; {then}",
            format_ms(step.instance_fire_ms)
        );
        t.logs = vec![log(def, now, LogType::Update, note)];
        return t;
    }
    let mut t = advance(stored, fire, step.next_ms, step.run, now);
    if step.run && unfinished > 0 && policy == ConcurrencyPolicy::Replace {
        t.cascade = Some(Cascade::ReplaceInstances {
            definition: def.job_id.clone(),
            keep: claim.instance_id.clone(),
            fire_ms: step.instance_fire_ms,
        });
    }
    if step.run {
        let spec = schedule::instance_spec(&def.spec, step.instance_fire_ms);
        let mut instance = Job::new(claim.instance_id.clone(), spec);
        instance.trigger_time_ms = def.trigger_time_ms;
        instance.created_at_ms = now;
        instance.fire_count = fired;
        instance.scheduled_fire_ms = Some(step.instance_fire_ms);
        instance.instance_of = Some(def.job_id.clone());
        let note = format!("fire {} of {}", format_ms(fire), def.job_id);
        let receive = log(&instance, now, LogType::Receive, note);
        let mut instance = StoredJob::new(instance);
        if instance.job.spec.fans_out() {
            // A sharded instance is queued, due now: its own claim fans it out.
            instance.job.updated_at_ms = now;
            t.follow_up = Some(FollowUp {
                job: instance,
                logs: vec![receive],
            });
            return t;
        }
        lease(&mut instance, claim, now);
        let logs = vec![receive, sent(&instance.job, claim, now)];
        (t.follow_up, t.handout) = (
            Some(FollowUp {
                job: instance,
                logs,
            }),
            Handout::FollowUp,
        );
    }
    t
}

/// Moves a queued recurring job on to its fire `next` (one more fire counted), or finishes it
/// when its schedule is exhausted (`None`), and says whether a claim `fired` or skipped `fire`
/// — except for a plain fire the schedule goes on from: the instance's own log tells of it,
/// and a cron firing every second would fill the job's log otherwise.
fn advance(stored: &StoredJob, fire: i64, next: Option<i64>, fired: bool, now: i64) -> Transition {
    let mut after = stored.clone();
    after.job.attempt = 0;
    after.job.lease_losses = 0;
    after.job.updated_at_ms = now;
    let what = if fired {
        "fired"
    } else {
        "skipped the missed fire"
    };
    let (note, next_fire) = match next {
        Some(at_ms) => {
            after.job.trigger_time_ms = at_ms;
            after.job.scheduled_fire_ms = Some(at_ms);
            after.job.fire_count += 1;
            let note = format!("{what} {}; next fire {}", format_ms(fire), format_ms(at_ms));
            ((!fired).then_some(note), NextFire::At(at_ms))
        }
        None => {
            after.job.state = JobState::Succeeded;
            after.job.finished_at_ms = Some(now);
            after.job.last_message = Some("schedule complete".into());
            let note = format!("{what} {}, the last of its schedule", format_ms(fire));
            (Some(note), NextFire::Exhausted)
        }
    };
    // Attempt 0, as the job's before a first claim: a schedule line is of no run.
    let logs = note.map(|n| log(&stored.job, now, LogType::Update, n));
    let mut t = changed(stored, after, logs.into_iter().collect());
    t.next_fire = next_fire;
    t
}

fn complete(
    stored: &StoredJob,
    report: RunReport,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    stored.leased_with(&report.token)?;
    let (job, outcome) = (&stored.job, report.outcome);
    if let Some(mr) = &job.spec.map_reduce
        && job.shard.is_none()
        && outcome == Outcome::Success
        && (report.mapped > 0 || mr.reduce)
    {
        return Ok(mapped(stored, report, now_ms));
    }
    let node = report.node.as_str();
    let mut logs: Vec<LogEntry> = report
        .logs
        .iter()
        .map(|l| log(job, l.time_ms, LogType::Biz, &l.message).with_level(l.level))
        .map(|l| l.by_node(node))
        .collect();
    let summary = match report.message.as_str() {
        "" => outcome.to_string(),
        message => format!("{outcome}: {message}"),
    };
    let level = if outcome == Outcome::Success {
        LogLevel::Info
    } else {
        LogLevel::Warn
    };
    logs.push(
        log(job, now_ms, LogType::Finished, summary)
            .with_level(level)
            .by_node(node),
    );
    let end = RunEnd {
        outcome,
        message: report.message,
        may_retry: true,
    };
    Ok(end_run(stored, end, logs, now_ms, retry))
}

/// How a run ended, for [`end_run`].
struct RunEnd {
    outcome: Outcome,
    message: String,
    /// `false`: no retry, whatever `max_retries` says (the run's loss budget is spent).
    may_retry: bool,
}

/// A run of `stored` ended: retried, on to its next fire, or finished — with the feedback of
/// an instance that reached its end.
fn end_run(
    stored: &StoredJob,
    end: RunEnd,
    mut logs: Vec<LogEntry>,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Transition {
    let job = &stored.job;
    // Lost runs have their own budget: they do not use up retries.
    let attempt = match end.may_retry {
        true => job.attempt.saturating_sub(job.lease_losses),
        false => u32::MAX,
    };
    // The backoff without its random jitter, then a deterministic one.
    let exact = RetryPolicy {
        jitter: false,
        ..*retry
    };
    let scheduled = job.scheduled_fire_ms.unwrap_or(job.created_at_ms);
    let mut disposition = schedule::disposition(
        &job.spec,
        attempt,
        scheduled,
        job.fire_count,
        end.outcome,
        now_ms,
        &exact,
    );
    if let Disposition::Retry { at_ms } = &mut disposition
        && retry.jitter
    {
        *at_ms += retry_jitter_ms(*at_ms - now_ms, &job.job_id, job.attempt);
    }

    // The job as the run ended: what feedback reports, and where the next state starts.
    let mut ended = requeued(stored, now_ms);
    ended.job.last_outcome = Some(end.outcome);
    ended.job.last_message = Some(end.message.clone());
    let mut after = ended.clone();
    let (reported, next_fire) = match disposition {
        Disposition::Finish(state) => {
            after.job.state = state;
            after.job.finished_at_ms = Some(now_ms);
            let next = match job.spec.schedule.is_recurring() {
                true => NextFire::Exhausted,
                false => NextFire::Unchanged,
            };
            (Some(state), next)
        }
        Disposition::Retry { at_ms } => {
            after.job.trigger_time_ms = at_ms;
            let max = job.spec.max_retries;
            let note = format!("retry {attempt} of {max} at {}", format_ms(at_ms));
            logs.push(log(job, now_ms, LogType::Resend, note));
            (None, NextFire::Unchanged)
        }
        Disposition::NextFire { at_ms, instance } => {
            after.job.trigger_time_ms = at_ms;
            after.job.scheduled_fire_ms = Some(at_ms);
            after.job.fire_count += 1;
            after.job.attempt = 0;
            after.job.lease_losses = 0;
            (Some(instance), NextFire::At(at_ms))
        }
        // Never decided by the schedule: a mapped run's end is [`mapped`]'s.
        Disposition::WaitsForChildren => (None, NextFire::Unchanged),
    };
    let feedback = reported.filter(|_| job.spec.need_feedback).map(|state| {
        let mut snapshot = ended.job;
        snapshot.state = state;
        snapshot.finished_at_ms = Some(now_ms);
        FeedbackItem {
            feedback_id: String::new(),
            job: snapshot,
            outcome: end.outcome,
            message: end.message,
            finished_at_ms: now_ms,
        }
    });
    let mut t = changed(stored, after, logs);
    // A map-reduce run that ended otherwise than by mapping (failed, lost past its budget):
    // the children it mapped before go with it — unless it is retried, and maps them again.
    if job.spec.map_reduce.is_some()
        && job.shard.is_none()
        && t.cascade.is_none()
        && !matches!(disposition, Disposition::Retry { .. })
    {
        t.cascade = Some(Cascade::CancelShards {
            parent: job.job_id.clone(),
            run: Shard::run_of(job),
        });
    }
    (t.feedback, t.disposition, t.next_fire) = (feedback, Some(disposition), next_fire);
    t
}

/// The jitter of a retry `delay_ms` away: up to one more delay, like the backoff's own, but a
/// deterministic function of the job and its attempt (FNV-1a, then the splitmix64 finalizer):
/// jobs that fail together still spread out, and the same events give the same transition.
pub(super) fn retry_jitter_ms(delay_ms: i64, job_id: &str, attempt: u32) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job_id.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let fraction = ((h ^ (h >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
    (delay_ms.max(0) as f64 * fraction) as i64
}

/// A run lost without a result. Within the job's budget of lost runs it is queued again after
/// a backoff (a job that kills its worker must not take the next one at once); past it, the
/// run ends `EXCEPTION` and the job fails (or, if recurring, goes on to its next fire).
fn lease_lost(
    stored: &StoredJob,
    loss: LeaseLoss,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if job.state != JobState::Running {
        return Err(Refusal::NotRunning(job.state));
    }
    if job.waits_for_shards() {
        return Err(Refusal::WaitsForShards);
    }
    let expiry = job.lease_expiry_ms.unwrap_or_default();
    let cause = match loss {
        LeaseLoss::Expired if expiry >= now_ms => return Err(Refusal::LeaseNotExpired(expiry)),
        LeaseLoss::Expired => "lease expired",
        LeaseLoss::OwnerGone(owner) => match &job.lease_owner {
            Some(holder) if *holder != owner => return Err(Refusal::NotOwner(holder.clone())),
            _ => "its TaskTracker left the cluster",
        },
        LeaseLoss::StreamEnded { token, expiry_ms } => {
            stored.leased_with(&token)?;
            if expiry != expiry_ms {
                return Err(Refusal::LeaseRenewed(expiry));
            }
            "its TaskTracker left the cluster (its stream ended)"
        }
    };
    // A run lost past its deadline timed out: an attempt like any reported failure.
    if let Some(deadline) = job.deadline_ms.filter(|d| now_ms >= *d) {
        let timeout = job.spec.timeout_ms.unwrap_or_default();
        let message = format!(
            "ran past its timeout of {} (deadline {}) and was not ended by its TaskTracker ({cause})",
            crate::duration::format_ms(timeout),
            format_ms(deadline)
        );
        let line = log(
            job,
            now_ms,
            LogType::Finished,
            format!("TIMEOUT: {message}"),
        )
        .with_level(LogLevel::Warn);
        let end = RunEnd {
            outcome: Outcome::Timeout,
            message,
            may_retry: true,
        };
        return Ok(end_run(stored, end, vec![line], now_ms, retry));
    }
    let (losses, budget) = (
        job.lease_losses.saturating_add(1),
        job.spec.lease_loss_budget(),
    );
    let mut lost = stored.clone();
    lost.job.lease_losses = losses;
    if losses > budget {
        let message = format!(
            "{cause}: run lost {losses} times, more than max_lease_losses ({budget}) allows"
        );
        let line = log(job, now_ms, LogType::FixedDead, &message).with_level(LogLevel::Warn);
        let end = RunEnd {
            outcome: Outcome::Exception,
            message,
            may_retry: false,
        };
        let mut t = end_run(&lost, end, vec![line], now_ms, retry);
        // The write is from the job as stored, not from the counted copy.
        let fields = Field::changed(stored, &t.job);
        t.write = match t.write {
            Write::Finish { from, .. } => Write::Finish { from, fields },
            Write::Update { from, .. } => Write::Update { from, fields },
            other => other,
        };
        return Ok(t);
    }
    let mut delay = retry
        .delay(losses)
        .as_millis()
        .try_into()
        .unwrap_or(i64::MAX);
    if retry.jitter {
        delay += retry_jitter_ms(delay, &job.job_id, job.attempt);
    }
    let mut after = requeued(&lost, now_ms);
    after.job.trigger_time_ms = now_ms.saturating_add(delay);
    let note = format!(
        "{cause}; queued again at {} (lost run {losses} of at most {budget})",
        format_ms(after.job.trigger_time_ms)
    );
    let line = log(job, now_ms, LogType::FixedDead, note).with_level(LogLevel::Warn);
    let mut t = changed(stored, after, vec![line]);
    t.disposition = Some(Disposition::Retry {
        at_ms: t.job.job.trigger_time_ms,
    });
    Ok(t)
}

fn suspend(stored: &StoredJob, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    if stored.suspend_requested || job.state == JobState::Suspended {
        return Err(Refusal::AlreadySuspended);
    }
    let mut after = stored.clone();
    after.suspend_requested = true;
    after.job.updated_at_ms = now_ms;
    let note = match job.state {
        // Its shards (nodes) are suspended with it; the ones that run finish their attempt.
        JobState::Running if job.waits_for_shards() => "suspended by a user, with its shards",
        JobState::Running => "suspended by a user; the running attempt finishes first",
        JobState::Waiting => "suspended by a user; stays suspended once its predecessors end",
        _ => {
            after.job.state = JobState::Suspended;
            "suspended by a user"
        }
    };
    let mut t = changed(
        stored,
        after,
        vec![log(job, now_ms, LogType::Suspend, note)],
    );
    if has_children(job) {
        t.cascade = Some(Cascade::SuspendShards {
            parent: job.job_id.clone(),
            run: Shard::run_of(job),
        });
    }
    Ok(t)
}

fn resume(stored: &StoredJob, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let mut after = stored.clone();
    after.suspend_requested = false;
    after.job.updated_at_ms = now_ms;
    let mut next_fire = NextFire::Unchanged;
    let note = if job.state == JobState::Suspended {
        // A fire missed meanwhile follows the misfire policy: never a burst of catch-ups.
        let at_ms =
            schedule::resume_trigger(&job.spec, job.trigger_time_ms, job.fire_count, now_ms);
        after.job.state = JobState::Queued;
        after.job.trigger_time_ms = at_ms;
        if job.spec.schedule.is_recurring() {
            after.job.scheduled_fire_ms = Some(at_ms);
            next_fire = NextFire::At(at_ms);
        }
        format!("resumed by a user; runs at {}", format_ms(at_ms))
    } else if stored.suspend_requested {
        match job.state {
            JobState::Running if job.waits_for_shards() => "resumed by a user, with its shards",
            JobState::Waiting => "resumed by a user; runs once its predecessors end",
            _ => "resumed by a user before its running attempt ended",
        }
        .to_string()
    } else {
        return Err(Refusal::NotSuspended);
    };
    let mut t = changed(stored, after, vec![log(job, now_ms, LogType::Resume, note)]);
    t.next_fire = next_fire;
    if has_children(job) {
        t.cascade = Some(Cascade::ResumeShards {
            parent: job.job_id.clone(),
            run: Shard::run_of(job),
        });
    }
    Ok(t)
}

fn cancel(stored: &StoredJob, cause: CancelCause, now_ms: i64) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let cause_kind = cause.clone();
    let (note, cascade) = match cause {
        CancelCause::WithSchedule(_) if job.state == JobState::Running => {
            return Err(Refusal::InstanceRunning);
        }
        CancelCause::WithSchedule(definition) => {
            (format!("cancelled with its schedule {definition}"), None)
        }
        // A replaced run whose shards (workflow nodes) run takes them with it.
        CancelCause::Replaced(fire_ms) => (
            format!(
                "cancelled: replaced by the fire {} (concurrency policy replace)",
                format_ms(fire_ms)
            ),
            has_children(job).then(|| Cascade::CancelShards {
                parent: job.job_id.clone(),
                run: Shard::run_of(job),
            }),
        ),
        CancelCause::WithParent(parent) => (format!("cancelled with its job {parent}"), None),
        CancelCause::TargetGone(identity) => (
            format!("cancelled: its TaskTracker {identity} left the cluster before it ran"),
            None,
        ),
        CancelCause::User if has_children(job) => (
            "cancelled by a user".to_string(),
            Some(Cascade::CancelShards {
                parent: job.job_id.clone(),
                run: Shard::run_of(job),
            }),
        ),
        CancelCause::User => {
            let recurring = job.spec.schedule.is_recurring();
            let cascade = recurring.then(|| Cascade::CancelQueuedInstances {
                definition: job.job_id.clone(),
            });
            ("cancelled by a user".to_string(), cascade)
        }
    };
    let mut after = requeued(stored, now_ms);
    after.job.state = JobState::Cancelled;
    after.job.finished_at_ms = Some(now_ms);
    let mut t = changed(stored, after, vec![log(job, now_ms, LogType::Del, note)]);
    if cascade.is_some() {
        t.cascade = cascade;
    }
    // A node cancelled with its workflow lets no successor run: they are cancelled too.
    if let (CancelCause::WithParent(_), Some(Cascade::ShardEnded { successors, .. })) =
        (&cause_kind, &mut t.cascade)
    {
        successors.clear();
    }
    Ok(t)
}

/// The event a map-reduce job's reduce step that ended (`step`, as stored) gives its job: its
/// outcome and message (a cancelled step: `FAILED`). `None` for any other job, or a step not
/// yet ended. The step's own end cascades it; a sweep that finds the job still waiting after
/// the step ended (its tracker died between the two writes) gives the job the same event.
pub fn reduce_end(step: &Job) -> Option<Event> {
    if !step.state.is_final() || !matches!(step.map, Some(MapOf::Reduce { .. })) {
        return None;
    }
    Some(Event::ReduceEnded {
        outcome: match step.state {
            JobState::Succeeded => Outcome::Success,
            _ => step.last_outcome.unwrap_or(Outcome::Failed),
        },
        message: match step.state {
            JobState::Cancelled => "the reduce step was cancelled".to_string(),
            _ => step.last_message.clone().unwrap_or_default(),
        },
    })
}

/// A map-reduce job's run adds children: each item is a child job of the same node group,
/// queued and due now, with the item as its param `map.item`. Its id is the run's and the
/// item's index ([`Shard::run_of`]), so the same map made again (a retried run, a resent call)
/// makes no child twice. The job itself is not written.
fn map(stored: &StoredJob, batch: MapBatch, now_ms: i64) -> Result<Transition, Refusal> {
    stored.leased_with(&batch.token)?;
    let job = &stored.job;
    let Some(mr) = job.spec.map_reduce.as_ref().filter(|_| job.shard.is_none()) else {
        return Err(Refusal::NotMapReduce);
    };
    if batch.items.len() > MAX_MAP_BATCH {
        return Err(Refusal::MapBatchTooLarge(batch.items.len()));
    }
    if let Some(i) = batch
        .items
        .iter()
        .position(|item| item.len() > MAX_MAP_ITEM)
    {
        return Err(Refusal::MapItemTooLarge(
            batch.first_index.saturating_add(i as u32),
        ));
    }
    let budget = mr.children_budget();
    let end = u64::from(batch.first_index) + batch.items.len() as u64;
    if end > u64::from(budget) {
        return Err(Refusal::TooManyChildren(budget));
    }
    let run = Shard::run_of(job);
    let mut logs = Vec::with_capacity(batch.items.len() + 1);
    logs.push(log(
        job,
        now_ms,
        LogType::Update,
        format!("mapped items {}..{end}", batch.first_index),
    ));
    let children = (batch.first_index..)
        .zip(batch.items)
        .map(|(index, item)| {
            let mut spec = child_spec(&job.spec);
            spec.task_id = format!("{}#map-{index}", job.spec.task_id);
            spec.params.insert(MAP_ITEM_PARAM.to_string(), item);
            let mut child = shard_job(job, &run, index, 0, None, spec, now_ms);
            child.trigger_time_ms = now_ms;
            child.map = Some(MapOf::Child { index });
            StoredJob::new(child)
        })
        .collect();
    let mut t = keep(stored.clone());
    t.logs = logs;
    t.fan_out = children;
    Ok(t)
}

/// The spec of a map-reduce job's child or reduce step: the job's, run once, now, without
/// a schedule, feedback, key or map of its own.
fn child_spec(spec: &JobSpec) -> JobSpec {
    let mut spec = spec.clone();
    spec.schedule = crate::Schedule::Now;
    spec.rely_on_prev_cycle = false;
    spec.replace_on_exist = false;
    spec.concurrency_policy = ConcurrencyPolicy::Allow;
    spec.max_concurrent = None;
    spec.idempotency_key = None;
    spec.need_feedback = false;
    spec.route_key = None;
    spec.map_reduce = None;
    spec
}

/// A map-reduce job's run ended successfully after mapping `report.mapped` children (or none,
/// with a reduce step): the job holds no lease now and waits for its children; the store
/// looks at once whether they all ended already.
fn mapped(stored: &StoredJob, report: RunReport, now_ms: i64) -> Transition {
    let job = &stored.job;
    let mut after = stored.clone();
    release_for_shards(&mut after);
    after.job.updated_at_ms = now_ms;
    after.job.last_outcome = Some(Outcome::Success);
    after.job.last_message = Some(report.message.clone());
    after.job.map = Some(MapOf::Parent {
        children: report.mapped,
        reducing: None,
    });
    let node = report.node.as_str();
    let mut logs: Vec<LogEntry> = report
        .logs
        .iter()
        .map(|l| log(job, l.time_ms, LogType::Biz, &l.message).with_level(l.level))
        .map(|l| l.by_node(node))
        .collect();
    logs.push(
        log(
            job,
            now_ms,
            LogType::Sent,
            format!("mapped {} children; waits for them", report.mapped),
        )
        .by_node(node),
    );
    let mut t = changed(stored, after, logs);
    t.disposition = Some(Disposition::WaitsForChildren);
    t.cascade = Some(Cascade::ShardEnded {
        parent: job.job_id.clone(),
        run: Shard::run_of(job),
        successors: Vec::new(),
    });
    t
}

/// Every child of a map-reduce job ended: its reduce step is queued (once), or, without one,
/// the job ends — `SUCCESS` if every child succeeded.
fn children_ended(
    stored: &StoredJob,
    children: u32,
    reducing: Option<ChildTally>,
    progress: ShardProgress,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let tally = ChildTally {
        succeeded: progress.succeeded,
        failed: progress.failed,
    };
    let counted = format!(
        "{children} children ended: {} succeeded, {} failed",
        tally.succeeded, tally.failed
    );
    let reduce = job.spec.map_reduce.as_ref().is_some_and(|m| m.reduce);
    if reducing.is_some() {
        // Only the reduce step's end ends the job ([`Event::ReduceEnded`], from the step's own
        // end or a sweep that reads the ended step): a late tally of the run (a child's end
        // judged after the step ran) must not end it without the step's outcome.
        return Err(Refusal::Reducing);
    }
    if reduce {
        let mut after = stored.clone();
        after.job.updated_at_ms = now_ms;
        after.job.map = Some(MapOf::Parent {
            children,
            reducing: Some(tally),
        });
        let run = Shard::run_of(job);
        let mut spec = child_spec(&job.spec);
        spec.task_id = format!("{}#reduce", job.spec.task_id);
        let mut step = shard_job(job, &run, children, 0, None, spec, now_ms);
        step.trigger_time_ms = now_ms;
        step.map = Some(MapOf::Reduce { children });
        let logs = vec![
            log(
                job,
                now_ms,
                LogType::Sent,
                format!("{counted}; reduce queued"),
            ),
            log(
                &step,
                now_ms,
                LogType::Receive,
                format!("reduce of {}", job.job_id),
            ),
        ];
        let mut t = changed(stored, after, logs);
        t.fan_out = vec![StoredJob::new(step)];
        return Ok(t);
    }
    let (outcome, message) = match tally.failed {
        0 => (Outcome::Success, format!("all {counted}")),
        _ => (Outcome::Failed, counted),
    };
    let note = format!("{outcome}: {message}");
    Ok(ended_for_good(
        stored, outcome, message, note, now_ms, retry,
    ))
}

/// A map-reduce job's reduce step ended: so does the job, with its outcome and message.
fn reduce_ended(
    stored: &StoredJob,
    outcome: Outcome,
    message: String,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Result<Transition, Refusal> {
    let job = &stored.job;
    let Some(MapOf::Parent {
        children,
        reducing: Some(tally),
    }) = job.map.filter(|_| job.state == JobState::Running)
    else {
        return Err(Refusal::NotReducing);
    };
    let message = format!(
        "reduce {outcome} after {children} children ({} succeeded, {} failed){}",
        tally.succeeded,
        tally.failed,
        match message.as_str() {
            "" => String::new(),
            m => format!(": {m}"),
        }
    );
    let note = message.clone();
    Ok(ended_for_good(
        stored, outcome, message, note, now_ms, retry,
    ))
}

/// A run that ends for good, not retried whatever `max_retries` says (its shards, nodes,
/// children or reduce step ended): its `Finished` line `note`, at WARN unless it succeeded.
fn ended_for_good(
    stored: &StoredJob,
    outcome: Outcome,
    message: String,
    note: String,
    now_ms: i64,
    retry: &RetryPolicy,
) -> Transition {
    let level = match outcome {
        Outcome::Success => LogLevel::Info,
        _ => LogLevel::Warn,
    };
    let line = log(&stored.job, now_ms, LogType::Finished, note).with_level(level);
    let end = RunEnd {
        outcome,
        message,
        may_retry: false,
    };
    end_run(stored, end, vec![line], now_ms, retry)
}
