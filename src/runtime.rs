//! The tokio runtime of each command, chosen in one place: one thread (tokio's current-thread
//! scheduler, the cheapest on a small box: reference/h2-ceiling.md), or a multi-thread
//! scheduler over N workers, or over every core.

/// The most worker threads a `--threads` takes. Far beyond any core count this runs on; the
/// bound is there because tokio spawns every worker at start and panics (exit 134) when the OS
/// refuses one: `--threads 100000` aborted instead of saying what was wrong.
pub const MAX_THREADS: usize = 1024;

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
            n => match n.parse::<usize>() {
                Ok(n) if n <= MAX_THREADS => Ok(Threads::from_count(n)),
                Ok(_) => Err(format!(
                    "{s:?}: at most {MAX_THREADS} threads (cores, or 0, is one per core)"
                )),
                Err(_) => Err(format!(
                    "{s:?}: expected a number of threads from 1 to {MAX_THREADS}, or cores (0: cores)"
                )),
            },
        }
    }
}

/// A runtime with timers and I/O on `threads` threads: the current-thread scheduler for one,
/// the multi-thread scheduler otherwise. `name` names its threads (`pusher-run`).
pub fn build(threads: Threads, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
    let n = threads.count();
    // A library caller's `Exactly` skips the flag's parser: refused here rather than a panic.
    if n > MAX_THREADS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{n} threads: at most {MAX_THREADS}"),
        ));
    }
    match n {
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
        assert_eq!("1024".parse::<Threads>(), Ok(Threads::Exactly(MAX_THREADS)));
        // Beyond the bound: a usage error, not tokio's abort when the OS refuses a thread.
        let err = "100000".parse::<Threads>().unwrap_err();
        assert!(err.contains("at most 1024"), "{err}");
        let err = build(Threads::Exactly(100_000), "t").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(Threads::Cores.count() >= 1);
        let rt = build(Threads::Exactly(2), "t").unwrap();
        assert_eq!(rt.metrics().num_workers(), 2);
        let rt = build(Threads::Exactly(1), "t").unwrap();
        assert_eq!(rt.metrics().num_workers(), 1);
    }
}
