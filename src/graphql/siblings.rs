//! Batches shared by the objects of one list (a page of agents): the first object whose
//! resolver asks for a relation loads it for every object of the list in one statement, and the
//! others take their part of that answer.
//!
//! A DataLoader reaches the same single statement, but for a list whose members are known up
//! front it does a lot of work to rediscover them: every `load_one` hashes its key into a shared
//! map behind a lock and parks on a channel, the batch waits `AGENTRY_DATALOADER_DELAY_MS` in a
//! spawned task for the others to arrive, and each answer is hashed again and sent back over
//! its channel. In the W3 profile (50 agents with their key and 5 runs each) that machinery was
//! about 16% of the page's CPU. A sibling batch knows the list, so it needs none of it: one
//! `OnceCell` per relation and shape of arguments, filled by whichever object asks first.
//!
//! Objects outside such a list (a single `agent(id:)`, an agent reached through a run) keep
//! using the request's DataLoaders.

use std::{collections::HashMap, hash::Hash, sync::Arc};

use tokio::sync::OnceCell;

/// One relation of a list's objects, loaded once for all of them: a map from each object's key
/// to its value, or the error every object reports.
pub struct Batch<K, V> {
    loaded: OnceCell<Result<HashMap<K, V>, async_graphql::Error>>,
}

impl<K, V> Default for Batch<K, V> {
    fn default() -> Self {
        Self {
            loaded: OnceCell::new(),
        }
    }
}

impl<K: Eq + Hash, V: Clone> Batch<K, V> {
    /// `key`'s value (`None` when the batch has none for it), loading the whole batch with
    /// `load` if no object has yet. Concurrent callers wait for the one load.
    pub async fn get<F, Fut, E>(&self, key: &K, load: F) -> async_graphql::Result<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<async_graphql::Error>,
    {
        let loaded = self
            .loaded
            .get_or_init(|| async { load().await.map_err(Into::into) })
            .await;
        match loaded {
            Ok(map) => Ok(map.get(key).cloned()),
            Err(error) => Err(error.clone()),
        }
    }
}

/// A relation that takes arguments (`executions(first: 5)`): one [`Batch`] per distinct set
/// of arguments, as selections under one list may ask for the relation twice with different
/// arguments (under two aliases). Few shapes per list, so a vector, not a map.
pub struct Batches<A, K, V> {
    shapes: std::sync::Mutex<Vec<Shape<A, K, V>>>,
}

/// One set of arguments and its batch.
type Shape<A, K, V> = (A, Arc<Batch<K, V>>);

impl<A, K, V> Default for Batches<A, K, V> {
    fn default() -> Self {
        Self {
            shapes: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl<A: PartialEq, K, V> Batches<A, K, V> {
    /// The batch for `args`, created on first use.
    pub fn shape(&self, args: A) -> Arc<Batch<K, V>> {
        // Held for a lookup in a short vector only, never across an await; a poisoned lock
        // still holds consistent data (pushes are whole), so it is used as is.
        let mut shapes = self
            .shapes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, batch)) = shapes.iter().find(|(seen, _)| *seen == args) {
            return batch.clone();
        }
        let batch = Arc::new(Batch::default());
        shapes.push((args, batch.clone()));
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_batch_loads_once_for_all_its_members_and_shares_errors() {
        let batch: Batch<u32, String> = Batch::default();
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok::<_, async_graphql::Error>(HashMap::from([(1, "one".to_owned())]))
        };
        let (a, b, c) = tokio::join!(
            batch.get(&1, load),
            batch.get(&1, load),
            batch.get(&2, load)
        );
        assert_eq!(a.unwrap().as_deref(), Some("one"));
        assert_eq!(b.unwrap().as_deref(), Some("one"));
        assert_eq!(c.unwrap(), None);
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        let failing: Batch<u32, String> = Batch::default();
        let fail = || async { Err::<HashMap<u32, String>, _>(async_graphql::Error::new("down")) };
        assert_eq!(failing.get(&1, fail).await.unwrap_err().message, "down");
        assert_eq!(failing.get(&2, fail).await.unwrap_err().message, "down");
    }

    #[test]
    fn each_shape_of_arguments_has_its_own_batch() {
        let batches: Batches<i64, u32, String> = Batches::default();
        let five = batches.shape(5);
        assert!(Arc::ptr_eq(&five, &batches.shape(5)));
        assert!(!Arc::ptr_eq(&five, &batches.shape(10)));
    }
}
