//! What the daemon tells about itself: one `Report`, rendered five ways.
//!
//! The stats line (logged on SIGUSR1 and at exit), systemd's one-line STATUS=, text for
//! people, JSON for tools and the Prometheus text exposition format for scrapers.

use crate::cull::Culler;
use crate::ondemand::fanotify::Lazy;
use crate::ondemand::reply::FrontEnd;
use crate::ondemand::sourcemap::Location;
use crate::ondemand::sources::head::redact;
use crate::ondemand::Engine;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub version: String,
    pub mode: String,
    pub dir: String,
    pub tag: String,
    pub uptime_seconds: u64,
    pub space: Space,
    pub culling: Culling,
    pub graveyard_entries: u64,
    /// Entries removed from the graveyard since the start.
    pub graveyard_entries_removed: u64,
    pub ondemand: Option<OnDemandReport>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Space {
    pub block_size: u64,
    pub blocks_total: u64,
    pub blocks_available: u64,
    pub files_total: u64,
    pub files_free: u64,
    /// Percentages configured (run, cull, stop) for blocks and files.
    pub blocks_limits_percent: [u8; 3],
    pub files_limits_percent: [u8; 3],
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Culling {
    pub enabled: bool,
    pub kernel_wants_culling: bool,
    pub scanning: bool,
    pub scans: u64,
    pub objects_last_scan: u64,
    pub last_scan_seconds: f64,
    pub table_entries: u64,
    pub table_capacity: u64,
    pub culled: u64,
    pub bytes_freed: u64,
    pub skipped_in_use: u64,
    /// Candidates gone before their cull.
    pub skipped_vanished: u64,
    /// Candidates used or replaced since the scan.
    pub skipped_changed: u64,
    /// Candidates the kernel refused, or whose name cannot be sent.
    pub skipped_refused: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct OnDemandReport {
    pub objects: Vec<ObjectReport>,
    pub requests_in_flight: u64,
    pub opens: u64,
    pub opens_failed: u64,
    pub reads: u64,
    pub reads_failed: u64,
    pub bytes_written: u64,
    pub bad_messages: u64,
    /// Requests whose msg_id was already pending.
    pub duplicates: u64,
    /// Readahead windows fetched apart from the READs they followed.
    pub reads_ahead: u64,
    /// READs answered by a readahead window that was being fetched when they came.
    pub reads_joined: u64,
    pub sources: Vec<SourceReport>,
    /// The fanotify front end's own counters (absent with the cachefiles front end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanotify: Option<FanotifyReport>,
    /// Background prefetch (`prefetch` in a source): fills under way and what they fetched.
    pub prefetch: PrefetchReport,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PrefetchReport {
    /// Objects being prefetched now.
    pub active: u64,
    pub started: u64,
    pub completed: u64,
    /// Stopped by a CLOSE or detach before completing.
    pub stopped: u64,
    pub failed: u64,
    /// Bytes fetched by prefetch (not in `bytes_written`).
    pub bytes: u64,
}

/// The fanotify front end: its events and attached blobs. Fetched ranges and fills that
/// failed (denied with EIO) are the `reads` and `reads_failed` beside it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FanotifyReport {
    pub attached_blobs: Vec<String>,
    pub events: u64,
    /// Ranges already in the file, allowed at once.
    pub allowed_at_once: u64,
    /// Events denied without a fetch: no attached blob has the file, or unreadable events.
    pub denied_unknown: u64,
    pub attaches: u64,
    pub attaches_failed: u64,
    pub detaches: u64,
    /// Blobs found whole (unmarked and recorded), and attached whole from an earlier run.
    pub completed: u64,
    pub complete_at_attach: u64,
    pub digest_mismatches: u64,
    /// Detached blob files culled.
    pub culled: u64,
    /// Times the file was asked (SEEK_HOLE) what the daemon's map of it did not hold.
    pub lookups: u64,
    /// Fills started ahead of a reader nearing the end of what is filled.
    pub fills_ahead: u64,
    /// Events that waited for a fill in flight instead of fetching their range again.
    pub waited: u64,
    /// Whether this kernel's EROFS reads a file-backed mount's metadata through fanotify
    /// events (`raised`: mounts are lazy), or not (`not-raised`: blobs are filled whole before
    /// `cachefilesctl mount` mounts them); `unknown` until a mount found out.
    pub erofs_meta_events: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ObjectReport {
    pub object_id: u32,
    pub volume: String,
    pub fsid: String,
    pub size: u64,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceReport {
    pub index: usize,
    pub location: String,
    pub reads: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency_p50_seconds: Option<f64>,
    pub latency_p90_seconds: Option<f64>,
    pub latency_p99_seconds: Option<f64>,
    /// A remote source's URLs or registries (mirrors after the first), each with its health.
    pub endpoints: Vec<crate::ondemand::sources::EndpointStatus>,
}

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 * 100.0 / total as f64
    }
}

impl Space {
    /// `statfs` (if it answered) and the configured limit percentages, indexed by `Limit`.
    pub fn new(statfs: Option<crate::cull::signal::Space>, limits: [u8; 6]) -> Space {
        let st = statfs.unwrap_or_default();
        Space {
            block_size: st.block_size,
            blocks_total: st.blocks,
            blocks_available: st.blocks_available,
            files_total: st.files,
            files_free: st.files_free,
            blocks_limits_percent: [limits[0], limits[1], limits[2]],
            files_limits_percent: [limits[3], limits[4], limits[5]],
        }
    }
}

impl Culling {
    /// The culler's counters (`None`: culling disabled) and whether culling is wanted now.
    pub fn new(culler: Option<&Culler>, wanted: bool) -> Culling {
        let Some(c) = culler else {
            return Culling {
                kernel_wants_culling: wanted,
                ..Default::default()
            };
        };
        let s = &c.stats;
        Culling {
            enabled: true,
            kernel_wants_culling: wanted,
            scanning: c.is_scanning(),
            scans: s.scans,
            objects_last_scan: s.objects_last_scan,
            last_scan_seconds: s.last_scan_duration.as_secs_f64(),
            table_entries: c.ready_len() as u64,
            table_capacity: c.table_capacity() as u64,
            culled: s.culled,
            bytes_freed: s.bytes_freed,
            skipped_in_use: s.in_use,
            skipped_vanished: s.vanished,
            skipped_changed: s.changed,
            skipped_refused: s.refused,
        }
    }
}

impl OnDemandReport {
    /// The fanotify front end's report: the engine's, plus the group's counters.
    pub fn fanotify(lazy: &Lazy) -> OnDemandReport {
        let g = &lazy.group.stats;
        let mut attached_blobs: Vec<String> = lazy
            .attached()
            .map(|(_, _, path)| path.display().to_string())
            .collect();
        attached_blobs.sort();
        OnDemandReport {
            fanotify: Some(FanotifyReport {
                attached_blobs,
                events: g.events,
                allowed_at_once: g.present,
                denied_unknown: g.unknown + g.bad_events,
                attaches: lazy.stats.attaches,
                attaches_failed: lazy.stats.attaches_failed,
                detaches: lazy.stats.detaches,
                completed: g.completed,
                complete_at_attach: g.complete_at_attach,
                digest_mismatches: g.digest_mismatches,
                culled: lazy.stats.culled,
                lookups: g.lookups,
                fills_ahead: g.ahead,
                waited: g.waited,
                erofs_meta_events: lazy.meta_events().as_str().into(),
            }),
            ..OnDemandReport::new(&lazy.engine)
        }
    }

    pub fn new<F: FrontEnd>(od: &Engine<F>) -> OnDemandReport {
        let mut objects: Vec<ObjectReport> = od
            .objects()
            .iter()
            .map(|(id, o)| ObjectReport {
                object_id: *id,
                volume: o.volume.clone(),
                fsid: o.fsid.clone(),
                size: o.blob.size(),
                source: o.blob.describe(),
            })
            .collect();
        objects.sort_by_key(|o| o.object_id);
        let sources = od
            .map()
            .sources
            .iter()
            .map(|src| {
                let per = od.per_source.get(&src.index).cloned().unwrap_or_default();
                SourceReport {
                    index: src.index,
                    // URLs as the logs show them: no user info, query or fragment.
                    location: match &src.location {
                        Location::Path(p) => p.display().to_string(),
                        Location::Url { urls, .. } => redact(&urls[0]),
                        Location::Registry {
                            repository, remote, ..
                        } => format!("{} {repository}", redact(&remote.endpoints[0].url)),
                    },
                    endpoints: match &src.location {
                        Location::Path(_) => Vec::new(),
                        Location::Url { remote, .. } | Location::Registry { remote, .. } => {
                            remote.status()
                        }
                    },
                    reads: per.reads,
                    bytes: per.bytes,
                    errors: per.errors,
                    latency_p50_seconds: per.latency.quantile(0.5),
                    latency_p90_seconds: per.latency.quantile(0.9),
                    latency_p99_seconds: per.latency.quantile(0.99),
                }
            })
            .collect();
        let s = &od.stats;
        OnDemandReport {
            objects,
            requests_in_flight: od.in_flight() as u64,
            opens: s.opens,
            opens_failed: s.opens_failed,
            reads: s.reads,
            reads_failed: s.reads_failed,
            bytes_written: s.bytes_written,
            bad_messages: s.bad_messages,
            duplicates: s.duplicates,
            reads_ahead: s.reads_ahead,
            reads_joined: s.reads_joined,
            sources,
            fanotify: None,
            prefetch: PrefetchReport {
                active: od.prefetches_active() as u64,
                started: od.prefetch.started,
                completed: od.prefetch.completed,
                stopped: od.prefetch.stopped,
                failed: od.prefetch.failed,
                bytes: od.prefetch.bytes,
            },
        }
    }
}

impl Report {
    /// The line logged on SIGUSR1 and at exit. Its wording is an interface: the VM scenarios
    /// and tests read counters from it (`culled N`, `reads N`, ...).
    pub fn stats_line(&self) -> String {
        let up = self.uptime_seconds;
        let c = &self.culling;
        let mut line = if c.enabled {
            format!(
                "uptime {up}s; scans {}, objects in last scan {}, last scan {:.3}s; culled {}, freed {} bytes, in use {}, vanished {}, changed {}, refused {}; table {}/{}; graveyard entries removed {}",
                c.scans, c.objects_last_scan, c.last_scan_seconds, c.culled, c.bytes_freed, c.skipped_in_use, c.skipped_vanished, c.skipped_changed, c.skipped_refused, c.table_entries, c.table_capacity, self.graveyard_entries_removed
            )
        } else {
            format!(
                "uptime {up}s; culling disabled; graveyard entries removed {}",
                self.graveyard_entries_removed
            )
        };
        if let Some(od) = &self.ondemand {
            let _ = write!(
                line,
                "; on-demand: {} objects open, {} in flight, opens {} ({} failed), reads {} ({} failed), {} bytes written, {} bad messages, {} duplicates",
                od.objects.len(), od.requests_in_flight, od.opens, od.opens_failed, od.reads, od.reads_failed, od.bytes_written, od.bad_messages, od.duplicates
            );
            if od.reads_ahead > 0 || od.reads_joined > 0 {
                let _ = write!(
                    line,
                    "; readahead: {} background windows, {} reads joined one in flight",
                    od.reads_ahead, od.reads_joined
                );
            }
            let p = &od.prefetch;
            if p.started > 0 {
                let _ = write!(
                    line,
                    "; prefetch: {} active, {} bytes, completed {}, stopped {}, failed {}",
                    p.active, p.bytes, p.completed, p.stopped, p.failed
                );
            }
            if let Some(f) = &od.fanotify {
                let _ = write!(line, "; fanotify: {} blobs attached, events {}, allowed at once {}, denied unknown {}", f.attached_blobs.len(), f.events, f.allowed_at_once, f.denied_unknown);
            }
        }
        line
    }

    /// One line for systemd's STATUS=: "culling: 12% free, 1234 culled; on-demand: 3 blobs,
    /// 0 in flight".
    pub fn summary(&self) -> String {
        let s = &self.space;
        let free = (s.blocks_available * 100)
            .checked_div(s.blocks_total)
            .map_or_else(
                || "free space unknown".to_string(),
                |p| format!("{p}% free"),
            );
        let c = &self.culling;
        let culling = match (c.enabled, c.kernel_wants_culling) {
            (true, true) => format!("culling: {free}, {} culled", c.culled),
            (true, false) => format!("idle: {free}, {} culled", c.culled),
            (false, _) => format!("culling disabled: {free}"),
        };
        match &self.ondemand {
            Some(od) => format!(
                "{culling}; on-demand: {} blobs, {} in flight",
                od.objects.len(),
                od.requests_in_flight
            ),
            None => culling,
        }
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let s = &self.space;
        let _ = writeln!(
            o,
            "cachefilesd {} ({} mode), up {}s",
            self.version, self.mode, self.uptime_seconds
        );
        let _ = writeln!(o, "cache: {} (tag {})", self.dir, self.tag);
        let _ = writeln!(
            o,
            "space: {:.1}% blocks free ({} of {} x {} B), {:.1}% files free ({} of {})",
            pct(s.blocks_available, s.blocks_total),
            s.blocks_available,
            s.blocks_total,
            s.block_size,
            pct(s.files_free, s.files_total),
            s.files_free,
            s.files_total
        );
        let [br, bc, bs] = s.blocks_limits_percent;
        let [fr, fc, fs] = s.files_limits_percent;
        let _ = writeln!(
            o,
            "limits: brun {br}% bcull {bc}% bstop {bs}%, frun {fr}% fcull {fc}% fstop {fs}%"
        );
        self.culling.text(&mut o);
        let _ = writeln!(o, "graveyard: {} entries", self.graveyard_entries);
        if let Some(od) = &self.ondemand {
            od.text(&mut o);
        }
        o
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises") + "\n"
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn metrics(&self) -> String {
        let info = Metric {
            name: "info",
            kind: "gauge",
            help: "Daemon version and mode.",
            samples: vec![(
                format!("{{version=\"{}\",mode=\"{}\"}}", self.version, self.mode),
                1.0,
            )],
        };
        let mut all = vec![info];
        all.extend(self.space_metrics());
        all.extend(self.culling_metrics());
        if let Some(od) = &self.ondemand {
            all.extend(od.metrics());
        }
        let mut o = String::new();
        for m in all {
            let _ = writeln!(o, "# HELP cachefilesd_{} {}", m.name, m.help);
            let _ = writeln!(o, "# TYPE cachefilesd_{} {}", m.name, m.kind);
            for (labels, v) in m.samples {
                let _ = writeln!(o, "cachefilesd_{}{labels} {v}", m.name);
            }
        }
        o
    }

    fn space_metrics(&self) -> Vec<Metric> {
        let s = &self.space;
        vec![
            gauge(
                "uptime_seconds",
                "Seconds since the daemon started.",
                self.uptime_seconds,
            ),
            gauge(
                "blocks_available",
                "Free blocks on the cache filesystem (statfs f_bavail).",
                s.blocks_available,
            ),
            gauge(
                "blocks_total",
                "Blocks of the cache filesystem.",
                s.blocks_total,
            ),
            gauge(
                "block_size_bytes",
                "Block size of the cache filesystem.",
                s.block_size,
            ),
            gauge(
                "files_free",
                "Free inodes on the cache filesystem.",
                s.files_free,
            ),
            gauge(
                "files_total",
                "Inodes of the cache filesystem.",
                s.files_total,
            ),
        ]
    }

    fn culling_metrics(&self) -> Vec<Metric> {
        let c = &self.culling;
        vec![
            gauge(
                "culling_active",
                "1 while the kernel asks for culling.",
                u64::from(c.kernel_wants_culling),
            ),
            counter("scans_total", "Scans of the cache tree.", c.scans),
            gauge(
                "objects_last_scan",
                "Objects found by the last scan.",
                c.objects_last_scan,
            ),
            Metric {
                samples: vec![(String::new(), c.last_scan_seconds)],
                ..gauge("last_scan_seconds", "Duration of the last scan.", 0)
            },
            gauge(
                "cull_table_entries",
                "Candidates waiting in the cull table.",
                c.table_entries,
            ),
            counter("culled_total", "Objects culled.", c.culled),
            counter(
                "culled_bytes_total",
                "Bytes freed by culling.",
                c.bytes_freed,
            ),
            gauge(
                "graveyard_entries",
                "Entries waiting in the graveyard.",
                self.graveyard_entries,
            ),
        ]
    }
}

/// `m` with one sample per endpoint of every remote source.
fn per_endpoint(
    od: &OnDemandReport,
    m: Metric,
    f: fn(&crate::ondemand::sources::EndpointStatus) -> f64,
) -> Metric {
    Metric {
        samples: od
            .sources
            .iter()
            .flat_map(|s| {
                s.endpoints.iter().enumerate().map(move |(i, e)| {
                    (format!("{{source=\"{}\",endpoint=\"{i}\"}}", s.index), f(e))
                })
            })
            .collect(),
        ..m
    }
}

/// One metric family: `cachefilesd_<name>`, its type and help, and its samples (labels, value).
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

fn gauge(name: &'static str, help: &'static str, value: u64) -> Metric {
    Metric {
        name,
        kind: "gauge",
        help,
        samples: vec![(String::new(), value as f64)],
    }
}

fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
    Metric {
        kind: "counter",
        ..gauge(name, help, value)
    }
}

impl Culling {
    fn text(&self, o: &mut String) {
        let c = self;
        if !c.enabled {
            let _ = writeln!(o, "culling: disabled");
            return;
        }
        let _ = writeln!(
            o,
            "culling: {}{}; table {}/{}; last scan {} objects in {:.3}s ({} scans); culled {} ({} bytes freed), {} skipped in use",
            if c.kernel_wants_culling { "active" } else { "idle" },
            if c.scanning { ", scanning" } else { "" },
            c.table_entries, c.table_capacity, c.objects_last_scan, c.last_scan_seconds, c.scans,
            c.culled, c.bytes_freed, c.skipped_in_use
        );
    }
}

impl OnDemandReport {
    fn text(&self, o: &mut String) {
        let od = self;
        let _ = writeln!(
            o,
            "on-demand: {} open objects, {} requests in flight; opens {} ({} failed), reads {} ({} failed), {} bytes written, {} bad messages",
            od.objects.len(), od.requests_in_flight, od.opens, od.opens_failed, od.reads, od.reads_failed, od.bytes_written, od.bad_messages
        );
        let _ = writeln!(
            o,
            "  readahead: {} background windows, {} READs joined one in flight",
            od.reads_ahead, od.reads_joined
        );
        for obj in &od.objects {
            let _ = writeln!(
                o,
                "  object {}: {} {} {} bytes from {}",
                obj.object_id, obj.volume, obj.fsid, obj.size, obj.source
            );
        }

        let q = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.1}ms", s * 1e3));
        for src in &od.sources {
            let _ = writeln!(
                o,
                "  source {} ({}): {} reads, {} bytes, {} errors, latency p50 {} p90 {} p99 {}",
                src.index,
                src.location,
                src.reads,
                src.bytes,
                src.errors,
                q(src.latency_p50_seconds),
                q(src.latency_p90_seconds),
                q(src.latency_p99_seconds)
            );
            for (i, e) in src.endpoints.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "    endpoint {i} {}: {}, {} requests, {} errors, last latency {}",
                    e.url,
                    if e.healthy {
                        "healthy".to_string()
                    } else {
                        format!("down ({} failures in a row)", e.failures)
                    },
                    e.requests,
                    e.errors,
                    q(e.latency_seconds)
                );
            }
        }
        if let Some(f) = &od.fanotify {
            let _ = writeln!(
                o,
                "fanotify: {} blobs attached; events {}, allowed at once {}, fetched {}, denied {}; attaches {} ({} failed), detaches {}; completed {}, complete at attach {}, digest mismatches {}; culled {}; looked up in the file {}, fills ahead {}, waited for a fill {}",
                f.attached_blobs.len(), f.events, f.allowed_at_once, od.reads, od.reads_failed + f.denied_unknown,
                f.attaches, f.attaches_failed, f.detaches, f.completed, f.complete_at_attach, f.digest_mismatches, f.culled,
                f.lookups, f.fills_ahead, f.waited
            );
            let _ = writeln!(o, "  erofs metadata events: {}", f.erofs_meta_events);
            for path in &f.attached_blobs {
                let _ = writeln!(o, "  attached {path}");
            }
        }
        // Last: tests and scripts find the fanotify line's counters by their first mention.
        let p = &od.prefetch;
        let _ = writeln!(
            o,
            "prefetch: {} active; started {}, completed {}, stopped {}, failed {}; fetched {} bytes",
            p.active, p.started, p.completed, p.stopped, p.failed, p.bytes
        );
    }

    fn metrics(&self) -> Vec<Metric> {
        let od = self;
        let per = |name, help, f: fn(&SourceReport) -> u64| Metric {
            samples: od
                .sources
                .iter()
                .map(|s| (format!("{{source=\"{}\"}}", s.index), f(s) as f64))
                .collect(),
            ..counter(name, help, 0)
        };
        let mut all = vec![
            gauge(
                "ondemand_objects",
                "Open on-demand objects.",
                od.objects.len() as u64,
            ),
            gauge(
                "ondemand_requests_in_flight",
                "OPEN and READ requests being served.",
                od.requests_in_flight,
            ),
            counter("ondemand_opens_total", "OPEN requests.", od.opens),
            counter(
                "ondemand_opens_failed_total",
                "OPEN requests refused.",
                od.opens_failed,
            ),
            counter("ondemand_reads_total", "READ requests.", od.reads),
            counter(
                "ondemand_reads_failed_total",
                "READ requests completed without data.",
                od.reads_failed,
            ),
            counter(
                "ondemand_reads_ahead_total",
                "Readahead windows fetched apart from the READs they followed.",
                od.reads_ahead,
            ),
            counter(
                "ondemand_reads_joined_total",
                "READs answered by a readahead window being fetched when they came.",
                od.reads_joined,
            ),
            counter(
                "ondemand_bad_messages_total",
                "Undecodable kernel messages.",
                od.bad_messages,
            ),
            gauge(
                "ondemand_prefetch_active",
                "Objects being prefetched in the background.",
                od.prefetch.active,
            ),
            counter(
                "ondemand_prefetch_bytes_total",
                "Bytes fetched by background prefetch.",
                od.prefetch.bytes,
            ),
            counter(
                "ondemand_prefetch_completed_total",
                "Background prefetches that filled their whole plan.",
                od.prefetch.completed,
            ),
            counter(
                "ondemand_prefetch_failed_total",
                "Background prefetches ended by an error (not retried).",
                od.prefetch.failed,
            ),
            per(
                "source_bytes_total",
                "Bytes fetched per [[source]] entry.",
                |s| s.bytes,
            ),
            per(
                "source_reads_total",
                "READs served per [[source]] entry.",
                |s| s.reads,
            ),
            per(
                "source_errors_total",
                "Failed fetches per [[source]] entry.",
                |s| s.errors,
            ),
            per_endpoint(
                od,
                gauge(
                    "source_endpoint_up",
                    "Whether a source's endpoint (0 = first URL or registry, then mirrors) serves.",
                    0,
                ),
                |e| f64::from(u8::from(e.healthy)),
            ),
            per_endpoint(
                od,
                counter(
                    "source_endpoint_errors_total",
                    "Failed requests per source endpoint.",
                    0,
                ),
                |e| e.errors as f64,
            ),
            per_endpoint(
                od,
                gauge(
                    "source_endpoint_latency_seconds",
                    "Latency of the last successful request per source endpoint.",
                    0,
                ),
                |e| e.latency_seconds.unwrap_or(f64::NAN),
            ),
        ];
        if let Some(f) = &od.fanotify {
            all.extend([
                gauge(
                    "fanotify_attached_blobs",
                    "Blobs attached (marked) for the fanotify front end.",
                    f.attached_blobs.len() as u64,
                ),
                counter(
                    "fanotify_events_total",
                    "Pre-content events read.",
                    f.events,
                ),
                counter(
                    "fanotify_allowed_at_once_total",
                    "Events whose range was in the file already.",
                    f.allowed_at_once,
                ),
                counter(
                    "fanotify_completed_total",
                    "Blobs found whole, unmarked and recorded.",
                    f.completed,
                ),
                counter(
                    "fanotify_digest_mismatches_total",
                    "Complete registry blobs whose bytes did not match their digest.",
                    f.digest_mismatches,
                ),
                counter(
                    "fanotify_denied_unknown_total",
                    "Events denied for a file no attached blob has.",
                    f.denied_unknown,
                ),
                counter(
                    "fanotify_lookups_total",
                    "Times a blob's file was asked (SEEK_HOLE) what the daemon's map did not hold.",
                    f.lookups,
                ),
                counter(
                    "fanotify_fills_ahead_total",
                    "Fills started ahead of a reader nearing the end of what is filled.",
                    f.fills_ahead,
                ),
                counter(
                    "fanotify_waited_total",
                    "Events that waited for a fill in flight instead of fetching again.",
                    f.waited,
                ),
            ]);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            version: "0.1.0".into(),
            mode: "on-demand".into(),
            dir: "/var/cache/fscache".into(),
            tag: "mycache".into(),
            uptime_seconds: 12,
            space: Space {
                block_size: 4096,
                blocks_total: 1000,
                blocks_available: 120,
                files_total: 100,
                files_free: 50,
                blocks_limits_percent: [10, 7, 3],
                files_limits_percent: [10, 7, 3],
            },
            culling: Culling {
                enabled: true,
                culled: 1234,
                table_capacity: 4096,
                ..Default::default()
            },
            graveyard_entries: 2,
            graveyard_entries_removed: 0,
            ondemand: Some(OnDemandReport {
                objects: vec![ObjectReport {
                    object_id: 1,
                    volume: "erofs,img".into(),
                    fsid: "img".into(),
                    size: 4096,
                    source: "/srv/erofs/img".into(),
                }],
                sources: vec![SourceReport {
                    index: 1,
                    location: "/srv/erofs/{fsid}".into(),
                    reads: 3,
                    bytes: 12288,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    /// SECURITY.md: `status` names URLs without user info or query (a pre-signed URL carries
    /// its signature there). The source list showed the source map's URLs as written.
    #[test]
    fn source_urls_are_shown_without_secrets() {
        let map = crate::ondemand::sourcemap::SourceMap::parse(
            "t.toml",
            "[[source]]\nurl = \"https://user:hunter2@blobs.test/{fsid}?X-Sig=hunter2\"\n\
             [[source]]\nregistry = \"https://robot:hunter2@registry.test\"\nrepository = \"lib/img\"\n",
        )
        .unwrap();
        let od = crate::ondemand::OnDemand::new(map, std::sync::Arc::new(|| {}));
        let report = Report {
            ondemand: Some(OnDemandReport::new(&od)),
            ..sample()
        };
        for shown in [report.text(), report.json(), report.metrics()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let text = report.text();
        assert!(text.contains("https://blobs.test/{fsid}"), "{text}");
        assert!(text.contains("https://registry.test lib/img"), "{text}");
    }

    /// The VM scenarios read `cachefilesctl status --json`: fields may be added, never renamed.
    #[test]
    fn json_keeps_every_field_it_ever_had() {
        let j: serde_json::Value = serde_json::from_str(&sample().json()).unwrap();
        let has = |v: &serde_json::Value, keys: &[&str]| {
            for k in keys {
                assert!(v.get(k).is_some(), "{k} missing from {v}");
            }
        };
        has(
            &j,
            &[
                "version",
                "mode",
                "dir",
                "tag",
                "uptime_seconds",
                "space",
                "culling",
            ],
        );
        has(&j, &["graveyard_entries", "ondemand"]);
        has(
            &j["space"],
            &[
                "block_size",
                "blocks_total",
                "blocks_available",
                "files_total",
                "files_free",
            ],
        );
        has(
            &j["space"],
            &["blocks_limits_percent", "files_limits_percent"],
        );
        has(
            &j["culling"],
            &[
                "enabled",
                "kernel_wants_culling",
                "scanning",
                "scans",
                "objects_last_scan",
            ],
        );
        has(
            &j["culling"],
            &[
                "last_scan_seconds",
                "table_entries",
                "table_capacity",
                "culled",
            ],
        );
        has(&j["culling"], &["bytes_freed", "skipped_in_use"]);
        let od = &j["ondemand"];
        has(
            od,
            &[
                "objects",
                "requests_in_flight",
                "opens",
                "opens_failed",
                "reads",
            ],
        );
        has(
            od,
            &[
                "reads_failed",
                "bytes_written",
                "bad_messages",
                "sources",
                "reads_ahead",
                "reads_joined",
            ],
        );
        has(
            &od["objects"][0],
            &["object_id", "volume", "fsid", "size", "source"],
        );
        has(
            &od["sources"][0],
            &["index", "location", "reads", "bytes", "errors"],
        );
        has(
            &od["sources"][0],
            &[
                "latency_p50_seconds",
                "latency_p90_seconds",
                "latency_p99_seconds",
            ],
        );
    }

    #[test]
    fn the_stats_line_and_status_keep_their_wording() {
        let mut r = sample();
        r.culling.scans = 2;
        r.culling.skipped_refused = 5;
        r.graveyard_entries_removed = 9;
        assert_eq!(
            r.stats_line(),
            "uptime 12s; scans 2, objects in last scan 0, last scan 0.000s; culled 1234, freed 0 bytes, in use 0, vanished 0, changed 0, refused 5; table 0/4096; graveyard entries removed 9; on-demand: 1 objects open, 0 in flight, opens 0 (0 failed), reads 0 (0 failed), 0 bytes written, 0 bad messages, 0 duplicates"
        );
        assert_eq!(
            r.summary(),
            "idle: 12% free, 1234 culled; on-demand: 1 blobs, 0 in flight"
        );
        r.culling.enabled = false;
        r.ondemand = None;
        r.space.blocks_total = 0;
        assert_eq!(
            r.stats_line(),
            "uptime 12s; culling disabled; graveyard entries removed 9"
        );
        assert_eq!(r.summary(), "culling disabled: free space unknown");
    }

    /// A READ can join a window that then found every page cached: the window is not
    /// counted, the READ is, and the stats line still shows it.
    #[test]
    fn the_stats_line_shows_reads_joined_with_no_window_counted() {
        let mut r = sample();
        let od = r.ondemand.as_mut().unwrap();
        od.reads_joined = 3;
        assert!(
            r.stats_line()
                .ends_with("; readahead: 0 background windows, 3 reads joined one in flight"),
            "{}",
            r.stats_line()
        );
    }

    #[test]
    fn prefetch_counters_are_in_every_rendering() {
        let mut r = sample();
        assert!(!r.stats_line().contains("prefetch"), "{}", r.stats_line());
        let od = r.ondemand.as_mut().unwrap();
        od.prefetch = PrefetchReport {
            active: 1,
            started: 3,
            completed: 1,
            stopped: 1,
            failed: 0,
            bytes: 5 << 20,
        };
        let line = r.stats_line();
        assert!(
            line.ends_with("; prefetch: 1 active, 5242880 bytes, completed 1, stopped 1, failed 0"),
            "{line}"
        );
        let t = r.text();
        assert!(
            t.contains("prefetch: 1 active; started 3, completed 1, stopped 1, failed 0; fetched 5242880 bytes"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["ondemand"]["prefetch"]["bytes"], 5 << 20);
        assert_eq!(j["ondemand"]["prefetch"]["active"], 1);
        let m = r.metrics();
        assert!(
            m.contains("cachefilesd_ondemand_prefetch_active 1\n"),
            "{m}"
        );
        assert!(
            m.contains("cachefilesd_ondemand_prefetch_bytes_total 5242880\n"),
            "{m}"
        );
    }

    #[test]
    fn fanotify_counters_are_in_text_json_and_metrics() {
        let mut r = sample();
        r.mode = "fanotify".into();
        r.ondemand.as_mut().unwrap().fanotify = Some(FanotifyReport {
            events: 40,
            lookups: 7,
            fills_ahead: 5,
            waited: 3,
            erofs_meta_events: "not-raised".into(),
            ..Default::default()
        });
        let t = r.text();
        assert!(
            t.contains("; looked up in the file 7, fills ahead 5, waited for a fill 3\n"),
            "{t}"
        );
        assert!(t.contains("  erofs metadata events: not-raised\n"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        let f = &j["ondemand"]["fanotify"];
        assert_eq!(
            (&f["lookups"], &f["fills_ahead"], &f["waited"]),
            (&7.into(), &5.into(), &3.into())
        );
        assert_eq!(f["erofs_meta_events"], "not-raised");
        let m = r.metrics();
        for sample in [
            "cachefilesd_fanotify_lookups_total 7\n",
            "cachefilesd_fanotify_fills_ahead_total 5\n",
            "cachefilesd_fanotify_waited_total 3\n",
        ] {
            assert!(m.contains(sample), "{sample} not in {m}");
        }
    }

    #[test]
    fn text_json_and_metrics_carry_the_same_facts() {
        let r = sample();
        let t = r.text();
        assert!(t.contains("space: 12.0% blocks free"), "{t}");
        assert!(t.contains("culled 1234"), "{t}");
        assert!(
            t.contains("object 1: erofs,img img 4096 bytes from /srv/erofs/img"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(j["culling"]["culled"], 1234);
        assert_eq!(j["ondemand"]["objects"][0]["fsid"], "img");
        let m = r.metrics();
        assert!(m.contains("cachefilesd_culled_total 1234\n"), "{m}");
        assert!(
            m.contains("cachefilesd_source_bytes_total{source=\"1\"} 12288\n"),
            "{m}"
        );
        // Every sample line is `name{labels} value` with a HELP and TYPE before it.
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("cachefilesd_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }
}
