//! The `medsentry` binary: parses the command line and runs it.

use std::io::IsTerminal;

use clap::Parser;
use medsentry::cli::LogFormat;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tune_allocator();
    // Parsed first, so that --log-format applies from the first line (a bad flag or value is
    // clap's own message and exit status 2).
    let cli = medsentry::cli::Cli::parse();
    let filter = EnvFilter::try_from_env("MEDSENTRY_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn,jpeg2k=warn"));
    // One JSON object per line for log collectors; text otherwise, coloured only on a
    // terminal and without NO_COLOR (escape codes in a log file or a container log are noise).
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_ansi(colour).with_env_filter(filter).with_writer(std::io::stderr).init(),
    }
    match medsentry::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medsentry: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc's malloc gives every thread that allocates its own arena (up to 8 per core) and
/// raises its mmap threshold after each large free, so that the decode buffers of
/// radiographs (megabytes, freed on many blocking threads) stay in arena heaps that are
/// never returned: under 64 callers resident memory climbed from 158 MiB to 938 MiB in two
/// minutes and kept rising. A fixed 2 MiB mmap threshold returns large buffers (a
/// radiograph's decode) to the system on free, and one arena per core bounds what the heaps
/// can keep. The threshold was 256 KiB until a 224 px model's per-input buffers (0.6 MB
/// tensors, a 1.2 MB residual) were mapped and faulted in afresh for every input: 2 ms of a
/// 224 px input's preparation. The same two settings through MALLOC_ARENA_MAX /
/// MALLOC_MMAP_THRESHOLD_ win when they are set.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8);
        // SAFETY: mallopt only sets allocator parameters; it is called before any thread starts.
        unsafe {
            if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
                libc::mallopt(libc::M_ARENA_MAX, cores as libc::c_int);
            }
            if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 2 << 20);
            }
        }
    }
}
