//! In-process locks on cloud containers (Azure NSGs): targets of any policy that share an
//! NSG take turns to read, plan and write it, so two of them never pick the same free
//! priority. Only the leader writes, so locks inside the process are enough.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The locks, by container id.
#[derive(Default)]
pub struct Locks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Locks {
    /// Takes the locks of `ids`, in one global order (no deadlock), until the guards drop.
    pub async fn lock(&self, mut ids: Vec<String>) -> Vec<OwnedMutexGuard<()>> {
        ids.sort();
        ids.dedup();
        let mutexes: Vec<Arc<tokio::sync::Mutex<()>>> = {
            let mut map = self.map.lock().expect("locks poisoned");
            ids.iter()
                .map(|id| map.entry(id.clone()).or_default().clone())
                .collect()
        };
        let mut guards = Vec::with_capacity(mutexes.len());
        for m in mutexes {
            guards.push(m.lock_owned().await);
        }
        guards
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_shared_container_is_taken_in_turns() {
        let locks = Arc::new(Locks::default());
        let first = locks.lock(vec!["nsg-b".into(), "nsg-a".into()]).await;
        let l = locks.clone();
        let second = tokio::spawn(async move { l.lock(vec!["nsg-a".into()]).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "the second holder waited");
        drop(first);
        let guards = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the lock is handed over")
            .unwrap();
        assert_eq!(guards.len(), 1);
        // Other containers are not held up.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.lock(vec!["nsg-c".into()])).await;
        assert!(other.is_ok());
    }
}
