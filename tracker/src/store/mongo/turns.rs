//! Turns by key: operations of this tracker that must not overlap for one key (the claims of
//! a node group, the tallies of a run's shards) wait for each other; a key's entry lives only
//! while someone holds or waits for its turn, so the map holds no more keys than are busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Turn = Arc<tokio::sync::Mutex<()>>;

/// One turn per key at a time.
#[derive(Debug, Default)]
pub(super) struct Turns {
    keys: Arc<Mutex<HashMap<String, Turn>>>,
}

impl Turns {
    /// Waits for the turn of `key`; it passes on when the answer is dropped.
    pub(super) async fn take(&self, key: &str) -> Held {
        let turn = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            keys.entry(key.to_string()).or_default().clone()
        };
        let guard = turn.clone().lock_owned().await;
        Held {
            keys: self.keys.clone(),
            key: key.to_string(),
            turn,
            guard: Some(guard),
        }
    }

    /// Keys with a holder or a waiter.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A held turn: see [`Turns::take`].
pub(super) struct Held {
    keys: Arc<Mutex<HashMap<String, Turn>>>,
    key: String,
    turn: Turn,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.guard = None;
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        // The map's and this one: nobody waits.
        if Arc::strong_count(&self.turn) <= 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_turn_per_key_and_no_key_kept_once_free() {
        let turns = Arc::new(Turns::default());
        let first = turns.take("a").await;
        let other = turns.take("b").await;
        let t = turns.clone();
        let waiter = tokio::spawn(async move {
            let _second = t.take("a").await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "\"a\" is held");
        drop(other);
        assert_eq!(
            turns.busy(),
            1,
            "\"b\" is free and forgotten; \"a\" is busy"
        );
        drop(first);
        waiter.await.unwrap();
        assert_eq!(turns.busy(), 0);
    }
}
