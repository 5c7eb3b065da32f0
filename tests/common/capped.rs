//! The sidecar binary as its own process under a memory cap (RLIMIT_DATA: the heap and
//! every private writable mapping), so that a bomb shows as a dead server, and its peak
//! resident memory read from /proc (VmHWM).

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;

pub struct CappedServer {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

impl CappedServer {
    /// Starts `medsentry serve` on the repository's models with `extra` flags, its data
    /// segment capped at `cap_bytes`, and waits until its health says SERVING.
    pub async fn start(cap_bytes: u64, extra: &[&str]) -> CappedServer {
        CappedServer::start_in(&super::models_dir(), cap_bytes, extra).await
    }

    /// [`CappedServer::start`] on the bundles in `models_dir`.
    pub async fn start_in(models_dir: &std::path::Path, cap_bytes: u64, extra: &[&str]) -> CappedServer {
        CappedServer::start_at(models_dir, free_port(), cap_bytes, extra).await
    }

    /// [`CappedServer::start_in`] on a given gRPC address (a restart on the same port).
    pub async fn start_at(models_dir: &std::path::Path, grpc: SocketAddr, cap_bytes: u64, extra: &[&str]) -> CappedServer {
        let admin = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_medsentry"));
        cmd.args(["serve", "--intra-threads", "2", "--listen", &grpc.to_string(), "--admin-listen", &admin.to_string()]);
        cmd.args(["--models-dir", &models_dir.display().to_string()]);
        cmd.args(extra).env("MEDSENTRY_LOG", "error").stdout(Stdio::null()).stderr(Stdio::inherit());
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: cap_bytes, rlim_max: cap_bytes };
                if libc::setrlimit(libc::RLIMIT_DATA, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the medsentry binary");
        let server = CappedServer { grpc, admin, child };
        server.wait_serving().await;
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_serving(&self) {
        use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
        let started = Instant::now();
        loop {
            if let Ok(ch) = self.try_channel().await {
                let status = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await;
                if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(120), "capped server did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc)).unwrap().connect().await
    }

    pub async fn client(&self) -> medsentry::proto::sentry_client::SentryClient<Channel> {
        medsentry::proto::sentry_client::SentryClient::new(self.try_channel().await.expect("connecting"))
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20)
    }

    /// A `/proc/<pid>/status` field in bytes (VmHWM: peak resident, VmRSS: resident now).
    pub fn status_bytes(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} not in /proc status (server gone?)"));
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Whether the process is still running (not killed by the cap).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits up to `within` for the process to exit; its status, or None if still running.
    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for CappedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
