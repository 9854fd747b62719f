use std::process::ExitCode;

// The send path allocates a few small objects per message (h2 frames, header maps, tasks);
// glibc malloc took ~10 % of the sender thread in profiles, mimalloc's thread-local free
// lists are much cheaper there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    pusher::cli::main()
}
