use std::process::ExitCode;

// The send path allocates a few small objects per message (h2 frames, header maps, tasks);
// glibc malloc took ~10 % of the sender thread in profiles, mimalloc's thread-local free
// lists are much cheaper there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    raise_open_files_limit();
    pusher::cli::main()
}

/// The soft limit on open files raised to the hard one, as Go programs do at start: a
/// server's sockets (a fake's connections, a bench's, `pusher results`' webhook calls: up to
/// 256 per hooked app while hooks hang) ran into systemd's default of 1,024, and then Kafka's
/// and PostgreSQL's connections failed too. The hard limit stays what the operator set.
#[cfg(unix)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, which lives here. A
    // failure leaves the limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() {}

/// No transparent huge pages for this process. mimalloc asks for them (MADV_HUGEPAGE), and
/// the first touch of each one zeroes 2 MB: a burst of allocations after mimalloc had given
/// memory back (a queue that filled, a backlog arriving) spent 250 ms zeroing pages on one
/// thread. The sender-only open loop at 47,667/s stopped answering for 0.3-0.4 s in 4 runs of
/// 6 that way; without huge pages in 0 of 6, at a peak RSS of 49-68 MB against 84-230 MB.
/// `pusher run`'s CPU per message did not change. (mimalloc's `MIMALLOC_ALLOW_THP=0` does the
/// same, but only from the environment.)
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag of this process. If it
    // fails (an old kernel), huge pages stay on: slower at times, nothing worse.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}
