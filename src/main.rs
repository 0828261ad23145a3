#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc: the request path allocates and frees many small objects across
/// threads (HTTP tasks, the store's writer), where it is much faster than the
/// system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    passport::startup::install_crypto_provider();
    let cli = passport::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(passport::cli::run(cli));
    // Work still blocked on a peer (a DNS look-up, a stalled call) must not
    // hold the exit: `serve` has already stopped within its grace period.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
