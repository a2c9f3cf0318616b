//! In-process registry for `weft local` and tests.

use std::sync::Arc;

use tokio::sync::watch;

use super::{sorted, Members, Registration, Registry, RegistryError, WorkerInfo};

/// Membership kept in memory; registrations end when revoked or dropped.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    members: Arc<watch::Sender<Members>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(Arc::new(Vec::new()));
        Self {
            members: Arc::new(tx),
        }
    }

    fn remove(&self, id: &str) {
        self.members.send_modify(|m| {
            let rest: Vec<_> = m.iter().filter(|w| w.id != id).cloned().collect();
            *m = sorted(rest);
        });
    }
}

#[derive(Debug)]
struct MemoryRegistration {
    registry: MemoryRegistry,
    id: String,
}

#[async_trait::async_trait]
impl Registration for MemoryRegistration {
    async fn revoke(&self) -> Result<(), RegistryError> {
        self.registry.remove(&self.id);
        Ok(())
    }

    async fn set_draining(&self) -> Result<(), RegistryError> {
        self.registry.members.send_modify(|m| {
            let all = m
                .iter()
                .cloned()
                .map(|mut w| {
                    w.draining |= w.id == self.id;
                    w
                })
                .collect();
            *m = sorted(all);
        });
        Ok(())
    }
}

impl Drop for MemoryRegistration {
    fn drop(&mut self) {
        self.registry.remove(&self.id);
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, info: WorkerInfo) -> Result<Box<dyn Registration>, RegistryError> {
        if self.members.borrow().iter().any(|w| w.id == info.id) {
            return Err(RegistryError::Duplicate { id: info.id });
        }
        let id = info.id.clone();
        self.members.send_modify(|m| {
            let mut all = m.as_ref().clone();
            all.push(info);
            *m = sorted(all);
        });
        Ok(Box::new(MemoryRegistration {
            registry: self.clone(),
            id,
        }))
    }

    fn members(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            address: format!("http://{id}:1"),
            slots: 2,
            epoch: 0,
            version: "t".into(),
            draining: false,
            memory_limit: None,
        }
    }

    #[tokio::test]
    async fn register_revoke_drop() {
        let r = MemoryRegistry::new();
        let rx = r.members();
        let a = r.register(worker("a")).await.unwrap();
        let b = r.register(worker("b")).await.unwrap();
        assert!(r.register(worker("a")).await.is_err());
        assert_eq!(
            rx.borrow()
                .iter()
                .map(|w| w.id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        a.revoke().await.unwrap();
        assert_eq!(rx.borrow().len(), 1);
        drop(b);
        assert!(rx.borrow().is_empty());
        drop(a);
    }

    #[tokio::test]
    async fn draining_worker_stays_a_member_marked() {
        let r = MemoryRegistry::new();
        let rx = r.members();
        let a = r.register(worker("a")).await.unwrap();
        let _b = r.register(worker("b")).await.unwrap();
        a.set_draining().await.unwrap();
        let members = rx.borrow().clone();
        let state: Vec<(&str, bool)> = members
            .iter()
            .map(|w| (w.id.as_str(), w.draining))
            .collect();
        assert_eq!(state, [("a", true), ("b", false)]);
        assert!(!members[0].schedulable() && members[1].schedulable());
    }
}
