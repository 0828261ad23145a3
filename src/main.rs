#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc: the request path allocates and frees many small objects across
/// threads (HTTP tasks, the store's writer), where it is much faster than the
/// system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    passport::startup::install_crypto_provider();
    let cli = passport::cli::Cli::parse();
    match passport::cli::run(cli).await {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
