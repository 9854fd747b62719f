//! The tokio runtime of each command, chosen in one place: one thread (tokio's current-thread
//! scheduler, the cheapest on a small box: reference/h2-ceiling.md), or a multi-thread
//! scheduler over N workers, or over every core.

/// How many threads a command's runtime runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// One worker per core (tokio's default).
    #[default]
    Cores,
    Exactly(usize),
}

impl Threads {
    /// `0` means every core.
    pub fn from_count(n: usize) -> Threads {
        if n == 0 {
            Threads::Cores
        } else {
            Threads::Exactly(n)
        }
    }

    /// The number of worker threads this means on this machine.
    pub fn count(self) -> usize {
        match self {
            Threads::Cores => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Threads::Exactly(n) => n.max(1),
        }
    }
}

impl std::str::FromStr for Threads {
    type Err = String;
    fn from_str(s: &str) -> Result<Threads, String> {
        match s {
            "cores" | "auto" | "0" => Ok(Threads::Cores),
            n => n
                .parse::<usize>()
                .map(Threads::from_count)
                .map_err(|_| format!("{s:?}: expected a number of threads, or cores")),
        }
    }
}

/// A runtime with timers and I/O on `threads` threads: the current-thread scheduler for one,
/// the multi-thread scheduler otherwise. `name` names its threads (`pusher-run`).
pub fn build(threads: Threads, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    match threads.count() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(name)
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .thread_name(name)
            .build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts() {
        assert_eq!("1".parse::<Threads>(), Ok(Threads::Exactly(1)));
        assert_eq!("cores".parse::<Threads>(), Ok(Threads::Cores));
        assert_eq!("0".parse::<Threads>(), Ok(Threads::Cores));
        assert!("many".parse::<Threads>().is_err());
        assert!(Threads::Cores.count() >= 1);
        let rt = build(Threads::Exactly(2), "t").unwrap();
        assert_eq!(rt.metrics().num_workers(), 2);
        let rt = build(Threads::Exactly(1), "t").unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
    }
}
