//! `check [--repair]`: what the kernel would not have made or would refuse, and the repair.
//!
//! Broken entries are renamed into the graveyard (as cachefiles_bury_object does) and the
//! graveyard is reaped. The caller holds the cache lock for a repair.

use super::inventory::{walk, Finding, Keep, Repair, Survey};
use super::{reap, ToolError};
use crate::cachedir::graveyard::bury;
use crate::cachedir::tree::stat;
use crate::cachedir::{CacheDir, Name};
use nix::errno::Errno;

#[derive(Debug, Default)]
pub struct RepairReport {
    pub buried: Vec<String>,
    /// Entries gone or replaced since the walk: left alone.
    pub skipped: Vec<String>,
    pub reaped: u64,
}

/// Buries every entry with [`Repair::Bury`] once (an entry may have several findings), then
/// reaps the graveyard.
pub fn repair(root: &CacheDir, s: &Survey) -> Result<RepairReport, ToolError> {
    let graveyard = root.ensure_graveyard()?;
    let mut report = RepairReport::default();
    let mut done: Vec<&Vec<Name>> = Vec::new();
    for f in s.findings.iter().filter(|f| f.repair == Repair::Bury) {
        if done.contains(&&f.path) {
            continue;
        }
        done.push(&f.path);
        match bury_one(root, f, &graveyard) {
            Ok(true) => report.buried.push(f.show()),
            Ok(false) => report.skipped.push(f.show()),
            Err(e) => return Err(e),
        }
    }
    report.reaped = reap(&graveyard)?;
    Ok(report)
}

fn bury_one(root: &CacheDir, f: &Finding, graveyard: &nix::dir::Dir) -> Result<bool, ToolError> {
    let (name, parent) = f.path.split_last().expect("findings name an entry");
    // A parent buried earlier in this pass (a volume with a bad xattr) takes its children along.
    let dir = match root.open_dir(parent) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(ToolError::os(root, "cannot open", &f.rel(), e)),
    };
    match stat(&dir, name) {
        Ok(st) if Some(st.st_ino) == f.ino => {}
        Ok(_) | Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(ToolError::os(root, "cannot stat", &f.rel(), e)),
    }
    bury(&dir, name, graveyard)
        .map_err(|e| ToolError::os(root, "cannot move into the graveyard", &f.rel(), e))?;
    Ok(true)
}

pub struct CheckResult {
    pub found: Survey,
    /// With a repair: what it did and the check run again afterwards.
    pub repaired: Option<(RepairReport, Survey)>,
}

impl CheckResult {
    /// Whether problems remain (after the repair, if one ran).
    pub fn clean(&self) -> bool {
        let last = self.repaired.as_ref().map_or(&self.found, |(_, s)| s);
        !last.findings.iter().any(|f| f.is_problem())
    }
}

/// Runs the check; with `fix`, repairs what it can and checks again.
pub fn check(root: &CacheDir, fix: bool) -> Result<CheckResult, ToolError> {
    let found = walk(root, None, Keep::CHECK)?;
    if !fix || !found.findings.iter().any(|f| f.repair != Repair::None) {
        return Ok(CheckResult {
            found,
            repaired: None,
        });
    }
    let report = repair(root, &found)?;
    let again = walk(root, None, Keep::CHECK)?;
    Ok(CheckResult {
        found,
        repaired: Some((report, again)),
    })
}
