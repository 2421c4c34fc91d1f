//! Admission control: sessions reserve their memory and CPU limits from the
//! host's capacity, and creation is refused when they would not fit.

use std::collections::HashMap;

use crate::config::Capacity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
}

#[derive(Debug)]
pub struct Admission {
    capacity: Capacity,
    held: HashMap<String, Reservation>,
}

impl Admission {
    pub fn new(capacity: Capacity) -> Admission {
        Admission { capacity, held: HashMap::new() }
    }

    fn used(&self) -> Reservation {
        self.held.values().fold(Reservation { memory_bytes: 0, cpu_millis: 0 }, |a, r| Reservation {
            memory_bytes: a.memory_bytes + r.memory_bytes,
            cpu_millis: a.cpu_millis + r.cpu_millis,
        })
    }

    /// Reserves room for a session, or says what is full.
    pub fn admit(&mut self, session_id: &str, want: Reservation) -> Result<(), String> {
        let used = self.used();
        if self.held.len() as u64 >= u64::from(self.capacity.sessions) {
            return Err(format!("the host runs its maximum of {} sessions", self.capacity.sessions));
        }
        if used.memory_bytes + want.memory_bytes > self.capacity.memory_bytes {
            return Err(format!(
                "the host has {} MiB of session memory left and this session reserves {} MiB",
                self.capacity.memory_bytes.saturating_sub(used.memory_bytes) >> 20,
                want.memory_bytes >> 20
            ));
        }
        if used.cpu_millis + want.cpu_millis > self.capacity.cpu_millis {
            return Err(format!(
                "the host has {:.2} CPUs of session capacity left and this session reserves {:.2}",
                self.capacity.cpu_millis.saturating_sub(used.cpu_millis) as f64 / 1000.0,
                want.cpu_millis as f64 / 1000.0
            ));
        }
        self.held.insert(session_id.to_string(), want);
        Ok(())
    }

    /// Moves a reservation to another holder, such as from a warm pool
    /// member to the session that claims it. Returns false, changing
    /// nothing, when `from` has none.
    pub fn transfer(&mut self, from: &str, to: &str) -> bool {
        match self.held.remove(from) {
            Some(reservation) => {
                self.held.insert(to.to_string(), reservation);
                true
            }
            None => false,
        }
    }

    /// Returns a session's reservation once its resources are gone.
    pub fn release(&mut self, session_id: &str) {
        self.held.remove(session_id);
    }

    /// Returns whether any holder's id starts with `prefix`.
    pub fn holds_prefix(&self, prefix: &str) -> bool {
        self.held.keys().any(|id| id.starts_with(prefix))
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_does_not_fit_and_frees_on_release() {
        let half = Reservation { memory_bytes: 512 << 20, cpu_millis: 500 };
        let mut admission = Admission::new(Capacity { memory_bytes: 1 << 30, cpu_millis: 2000, sessions: 10 });
        admission.admit("a", half).unwrap();
        admission.admit("b", half).unwrap();
        let error = admission.admit("c", half).unwrap_err();
        assert!(error.contains("memory"), "{error}");
        admission.release("a");
        admission.admit("c", half).unwrap();
        assert_eq!(admission.held(), 2);

        let mut counted = Admission::new(Capacity { memory_bytes: 1 << 40, cpu_millis: 1 << 20, sessions: 2 });
        counted.admit("a", half).unwrap();
        counted.admit("b", half).unwrap();
        let error = counted.admit("c", half).unwrap_err();
        assert!(error.contains("maximum of 2"), "{error}");
        let mut cpu = Admission::new(Capacity { memory_bytes: 1 << 40, cpu_millis: 800, sessions: 10 });
        cpu.admit("a", half).unwrap();
        assert!(cpu.admit("b", half).unwrap_err().contains("CPUs"));
    }

    #[test]
    fn transfer_moves_a_reservation() {
        let half = Reservation { memory_bytes: 512 << 20, cpu_millis: 500 };
        let mut admission = Admission::new(Capacity { memory_bytes: 1 << 30, cpu_millis: 2000, sessions: 10 });
        admission.admit("member", half).unwrap();
        assert!(admission.transfer("member", "session"));
        assert!(!admission.transfer("member", "other"), "a reservation moves once");
        admission.release("member");
        assert_eq!(admission.held(), 1, "releasing the old holder frees nothing");
        admission.release("session");
        assert_eq!(admission.held(), 0);
    }
}
