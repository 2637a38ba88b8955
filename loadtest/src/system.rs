//! The machine a run happened on, and CPU time: the harness's own (it
//! shares the cores with the server, so its cost is part of the picture)
//! and a server process's, from `/proc`.

use std::time::Duration;

use serde::Serialize;

/// Where a run happened. Numbers from a 2-core VM and a 64-core server are
/// not comparable; the report says which one produced them.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs this process may run on (affinity and cgroup quota applied).
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// `MemTotal` from /proc/meminfo, in bytes.
    pub memory_bytes: Option<u64>,
    /// /proc/sys/kernel/osrelease.
    pub kernel: Option<String>,
    /// The 1-minute load average when the run started: a busy neighbour
    /// shows up here.
    pub load_average_1m: Option<f64>,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: read("/proc/cpuinfo").and_then(|t| cpu_model(&t)),
            memory_bytes: read("/proc/meminfo").and_then(|t| mem_total_bytes(&t)),
            kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
            load_average_1m: read("/proc/loadavg")
                .and_then(|s| s.split_whitespace().next()?.parse().ok()),
        }
    }
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of this whole process (every thread), from
/// `getrusage(RUSAGE_SELF)`, to the microsecond.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we hand it; a zeroed rusage
    // is a valid value of that plain C struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// User plus system CPU time of process `pid` (all its threads), from
/// `/proc/PID/stat`. Resolution is one clock tick (usually 10 ms), fine over
/// runs of seconds. `None` when the process is gone or /proc is missing.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from after the *last* `)`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of the harness and, optionally, of a server process, read at the
/// start and at the end of the measured window.
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    pub server_pid: Option<u32>,
}

/// One reading of a [`CpuProbe`].
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    pub harness: Duration,
    pub server: Option<Duration>,
}

impl CpuProbe {
    pub fn read(&self) -> CpuReading {
        CpuReading {
            harness: self_cpu(),
            server: self.server_pid.and_then(process_cpu),
        }
    }
}

/// CPU spent between two readings, as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CpuUse {
    /// CPU seconds (user + system) over the measured window.
    pub seconds: f64,
    /// Cores kept busy on average: `seconds / window`. 1.0 on a 2-core
    /// machine is half the machine.
    pub cores: f64,
    /// CPU microseconds per completed request (or call).
    pub us_per_request: Option<f64>,
}

impl CpuUse {
    pub fn between(before: Duration, after: Duration, window: Duration, requests: u64) -> CpuUse {
        let seconds = after.saturating_sub(before).as_secs_f64();
        CpuUse {
            seconds: round3(seconds),
            cores: round3(seconds / window.as_secs_f64().max(1e-9)),
            us_per_request: (requests > 0).then(|| round3(seconds * 1e6 / requests as f64)),
        }
    }
}

/// Rounds to 3 decimals, for reports that stay readable.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "1234 (tokio (rt) worker) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 9 0 100 1000000 500 18446744073709551615";
        assert_eq!(stat_cpu_ticks(line), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn our_own_process_has_readable_cpu_time() {
        // Spend a little CPU so neither reading is zero on a fresh process.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(process_cpu(std::process::id()).is_some());
        assert!(self_cpu() > Duration::ZERO);
    }

    #[test]
    fn cpuinfo_and_meminfo_parse() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        let meminfo = "MemTotal:        8152000 kB\nMemFree:  100 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(8_152_000 * 1024));
        let m = Machine::detect();
        assert!(m.nproc >= 1);
    }

    #[test]
    fn cpu_use_per_request() {
        let c = CpuUse::between(
            Duration::from_secs(1),
            Duration::from_secs(3),
            Duration::from_secs(4),
            40_000,
        );
        assert_eq!(c.seconds, 2.0);
        assert_eq!(c.cores, 0.5);
        assert_eq!(c.us_per_request, Some(50.0));
        assert_eq!(
            CpuUse::between(Duration::ZERO, Duration::ZERO, Duration::from_secs(1), 0)
                .us_per_request,
            None
        );
    }
}
