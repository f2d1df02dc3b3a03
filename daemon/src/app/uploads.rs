//! How many request bodies one tenant may have arriving at once: at most half of the
//! server's request slots (rounded up, so another tenant always has one when there are two). A request holds a server slot while its body arrives (so memory
//! held by bodies stays bounded), which a tenant sending slowly trickled bodies could
//! otherwise use to take every slot for up to its `body_read_timeout`, whether or not its
//! operator gave it a `max_concurrent`. Bodies on working links arrive in milliseconds, so
//! the share only binds a tenant that uploads slowly and in bulk.

use std::sync::Arc;

use crate::counts::{Counts, Held};

/// Bodies arriving per tenant, shared by every request of one configuration generation
/// (and carried over a reload with the server's slots).
#[derive(Debug)]
pub struct Uploads {
    /// Bodies one tenant may have arriving at once.
    share: usize,
    arriving: Arc<Counts<String>>,
}

/// One body arriving; the count drops with it.
pub type Upload = Held<String>;

impl Uploads {
    /// The share for `max_concurrent_requests` server slots: half of them rounded up, at
    /// least one.
    pub fn new(max_concurrent_requests: usize) -> Arc<Uploads> {
        Arc::new(Uploads {
            share: max_concurrent_requests.div_ceil(2).max(1),
            arriving: Counts::new(),
        })
    }

    /// Bodies one tenant may have arriving at once.
    pub fn share(&self) -> usize {
        self.share
    }

    /// Counts one more body of `tenant` arriving, or `None` when the tenant already has its
    /// share arriving.
    pub fn start(&self, tenant: &str) -> Option<Upload> {
        self.arriving.take(tenant.to_owned(), self.share).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_half_the_slots_and_others_are_not_counted_against_it() {
        let uploads = Uploads::new(6);
        let held: Vec<Upload> = (0..3).map(|_| uploads.start("a").unwrap()).collect();
        assert!(
            uploads.start("a").is_none(),
            "a fourth body of the same tenant"
        );
        let other = uploads.start("b").expect("another tenant still uploads");
        drop(held);
        assert!(uploads.start("a").is_some(), "finished bodies are released");
        drop(other);
        assert!(uploads.arriving.is_empty());
        assert_eq!(
            [1, 2, 3, 256].map(|n| Uploads::new(n).share()),
            [1, 1, 2, 128]
        );
    }
}
