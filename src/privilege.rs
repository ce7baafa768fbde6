//! Least privilege: after opening the device, keep only the file-access capabilities.
//!
//! Opening the device is the only step that needs CAP_SYS_ADMIN (the kernel then works with
//! the credentials it captured at open). The daemon keeps just the file-access capabilities
//! it needs to walk, stat and cull a 0700 cache tree whatever its ownership, and drops
//! everything else from all sets, including the bounding set, so a re-exec'd worker cannot
//! regain them.

use caps::{CapSet, Capability, CapsHashSet};

pub const KEPT: [Capability; 3] = [
    // Open, read and remove entries in cache directories not owned by us.
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    // Remove entries from the graveyard or sticky directories owned by others.
    Capability::CAP_FOWNER,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities: {0}")]
pub struct PrivilegeError(#[from] caps::errors::CapsError);

/// Drops every capability but `KEPT`. Must run before any thread is started: capabilities
/// are per thread and new threads inherit the creator's.
pub fn drop_privileges() -> Result<CapsHashSet, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = KEPT.into_iter().filter(|c| permitted.contains(c)).collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::all() {
            if !kept.contains(&cap) {
                // Capabilities newer than the running kernel are refused: nothing to drop.
                let _ = caps::drop(None, CapSet::Bounding, cap);
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(kept)
}
