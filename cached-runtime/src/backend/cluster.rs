//! The key layout and the multi-node steps of the Redis backend on a Redis
//! Cluster. A cluster runs a command or a script only when every key it
//! touches hashes to one slot (else `CROSSSLOT`), and `SCAN` sees one node.
//! So, on a cluster:
//!
//! - **An entry and everything about it share a slot.** The value of the
//!   logical key `K` (`{namespace}:{prefix}:{parts}`) lives at `{K}`: the
//!   braces make `K` (up to its first `}`) the hash tag. Its lease is
//!   `{K}:~lease`, its tag versions `{K}:~tags`, and the versions its
//!   lease's load started from `{K}:~ltags`. Every script touches these
//!   and the slot's epoch only. Keys stay readable in `redis-cli`.
//! - **A pattern invalidation removes leases, then values.** On one
//!   server it bumps the namespace's epoch, which every lease recorded, so
//!   that a load in flight cannot store what it read before the change
//!   behind the scan's back (see [`Lease`](super::Lease)). One epoch per
//!   namespace would sit in one slot, and one per slot would make every
//!   pattern invalidation 16,384 writes (the first design here: it took
//!   hundreds of milliseconds and timed out under load). Instead it scans
//!   every primary twice: first for the matching entries' leases, which it
//!   removes, so that a load holding one from before the change cannot
//!   store its value; then for the values. A load whose write landed
//!   before the first pass reached its lease left a value that the second
//!   pass finds (SCAN returns every key present throughout it). A key
//!   that `MIGRATE` moves during a pass may be on neither node when each
//!   is scanned, so the nodes it can have reached are scanned once more
//!   ([`after_pass`]). The scripts still read an epoch key in the entry's slot,
//!   `{namespace}:~epoch:{t}` ([`epoch_key`]), as on one server; nothing
//!   on a cluster bumps it, so it reads 0 and costs no round trip.
//! - **Tags are versions, not sets.** A tag `T` has a version at `{T}`, a
//!   random number made when first needed. A load (or write-through, or
//!   fill) reads its tags' versions before it takes its lease and stores
//!   them beside its value, and marks the value's envelope as stored with
//!   tags (a flag bit, see `codec`). A read of a marked entry checks the
//!   versions beside it against the current ones and serves it only if
//!   they are the same: a tagged call reads them in the same round trip as
//!   the entry, in parallel with its tags' current versions; an untagged
//!   call reads the entry alone (one `GETRANGE`, as on one server) and the
//!   versions only if it is marked. Invalidating a tag replaces its
//!   version: one command, whatever the number of entries, which become
//!   unreachable and expire on their own time. A version that is missing
//!   (expired, evicted), or a marked entry whose stored versions are, serves
//!   nothing, so losing one can never bring an entry back.
//! - **A load takes over the tags of the entry it replaces.** A tag
//!   invalidation reaches the entries stored under the tag, not the leases
//!   of loads that will replace them; a load under other tags (another
//!   function sharing the key, or an untagged batch) would store,
//!   unreached, what it read before the invalidation. So taking a lease
//!   answers the versions stored beside the entry there, and the load adds
//!   the current versions of the tags it does not name itself to those
//!   beside its lease, before it reads the source; its value is stored
//!   with them and marked. A write-through does the same. Until they are
//!   added, the lease's versions end with a line that does not parse, and
//!   a lease whose versions are gone stores nothing, so a lost step can
//!   only make a value unservable. (On one server the invalidation removes
//!   the lease of every key it reaches, whoever holds it.)

use std::borrow::Cow;
use std::sync::LazyLock;

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// The hash slot of `key`, as Redis computes it: CRC16 (XMODEM) of the key's
/// hash tag (the text between its first `{` and the first `}` after it, if
/// that is not empty), else of the whole key, modulo 16,384.
pub(crate) fn slot(key: &[u8]) -> usize {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    usize::from(crc16::State::<crc16::XMODEM>::calculate(hashed)) % SLOTS
}

/// For each slot, the smallest number whose decimal text hashes to it: the
/// hash tag of that slot's epoch key. Found once per process by counting up
/// (about 160,000 CRCs, well under a millisecond).
static SLOT_TAGS: LazyLock<Box<[u32]>> = LazyLock::new(|| {
    let mut tags = vec![u32::MAX; SLOTS].into_boxed_slice();
    let mut left = SLOTS;
    let mut n: u32 = 0;
    while left > 0 {
        let s = slot(itoa::Buffer::new().format(n).as_bytes());
        if tags[s] == u32::MAX {
            tags[s] = n;
            left -= 1;
        }
        n += 1;
    }
    tags
});

/// The epoch key of slot `s` under `namespace`: `{namespace}:~epoch:{t}`,
/// which hashes to `s`.
pub(crate) fn epoch_key(namespace: &str, s: usize) -> String {
    let tag = itoa::Buffer::new().format(SLOT_TAGS[s]).to_owned();
    format!("{namespace}:~epoch:{{{tag}}}")
}

/// A key of slot `s` under `namespace` that is never written:
/// `{namespace}:~probe:{t}`, read to be redirected to the node a slot
/// migrates to (see `RedisBackend::reach`).
pub(crate) fn probe_key(namespace: &str, s: usize) -> String {
    let tag = itoa::Buffer::new().format(SLOT_TAGS[s]).to_owned();
    format!("{namespace}:~probe:{{{tag}}}")
}

/// Why a namespace cannot be used on a cluster, if it cannot: every key
/// starts with it, and a brace in it would move the hash tag of every key
/// and epoch.
pub(crate) fn namespace_problem(namespace: &str) -> Option<&'static str> {
    if namespace.is_empty() {
        Some("a cache on a Redis Cluster needs a namespace (every key's hash tag starts with it)")
    } else if namespace.contains(['{', '}']) {
        Some(
            "a cache on a Redis Cluster needs a namespace without `{` or `}` (they would change every key's hash slot)",
        )
    } else {
        None
    }
}

/// The physical key of the value of logical key `key`: `{key}`.
pub(crate) fn value_key(key: &str) -> String {
    let mut k = String::with_capacity(key.len() + 2);
    k.push('{');
    k.push_str(key);
    k.push('}');
    k
}

/// A key beside the value of physical key `value` (`{K}`), in its slot:
/// `{K}` followed by `suffix`.
pub(crate) fn beside(value: &str, suffix: &str) -> String {
    let mut k = String::with_capacity(value.len() + suffix.len());
    k.push_str(value);
    k.push_str(suffix);
    k
}

/// Where a lease lives, beside its value.
pub(crate) const LEASE: &str = ":~lease";
/// The tag versions an entry was stored with, beside its value.
pub(crate) const TAGS: &str = ":~tags";
/// The tag versions the load holding the lease read before it started.
pub(crate) const LEASE_TAGS: &str = ":~ltags";

/// The key of the tag versions read by the load holding the lease `lease`
/// (`{K}:~lease` -> `{K}:~ltags`).
pub(crate) fn lease_tags_of(lease: &str) -> String {
    let value = lease.strip_suffix(LEASE).unwrap_or(lease);
    beside(value, LEASE_TAGS)
}

/// The glob on physical keys that matches the values whose logical keys
/// `pattern` matches: `{pattern}`. The braces are literal in a glob and
/// match the value key's own; a lease or tag-version key (which goes on
/// after the `}`) does not match. The pattern is [closed](crate::glob::closed)
/// first, so that the `}` (and a lease's suffix after it) cannot become
/// part of an unclosed class or an escape.
pub(crate) fn value_pattern(pattern: &str) -> String {
    value_key(&crate::glob::closed(pattern))
}

/// Whether `key`, as named on the cluster, is one of the cache's own
/// records in `namespace` that a pattern's glob (`{ns:...}`) can match (a
/// tag's version, `{ns:~tag:t}`), not an entry or a lease (see
/// [`key::is_record`](crate::key::is_record)).
pub(crate) fn is_record(key: &str, namespace: &str) -> bool {
    key.strip_prefix('{')
        .is_some_and(|logical| crate::key::is_record(logical, namespace))
}

/// The version key of the full tag key `tag`: `{tag}`.
pub(crate) fn version_key(tag: &str) -> String {
    value_key(tag)
}

/// The text an entry's tag versions are stored as: each tag's full key with
/// its length (so that no two lists read the same) and its version.
pub(crate) fn versions_text<'a>(tags: impl IntoIterator<Item = (&'a str, Cow<'a, str>)>) -> String {
    let mut text = String::new();
    for (tag, version) in tags {
        text.push_str(itoa::Buffer::new().format(tag.len()));
        text.push(':');
        text.push_str(tag);
        text.push('=');
        text.push_str(&version);
        text.push('\n');
    }
    text
}

/// The tags and versions of a list [`versions_text`] wrote; `None` if it
/// does not read as one (nothing stored with it may be served).
pub(crate) fn parse_versions(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut list = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (len, after) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let tag = after.get(..len)?;
        let after = after.get(len..)?.strip_prefix('=')?;
        let (version, next) = after.split_once('\n')?;
        list.push((tag, version));
        rest = next;
    }
    Some(list)
}

/// The tags a load with `tags` takes over from the entry it replaces,
/// whose versions are `replaced` (as [`versions_text`] wrote them): those
/// the load does not name itself, each once. `None` if `replaced` does not
/// read as a list.
pub(crate) fn to_take_over(replaced: &str, tags: &[String]) -> Option<Vec<String>> {
    let mut others: Vec<String> = Vec::new();
    for (tag, _) in parse_versions(replaced)? {
        if !tags.iter().any(|t| t == tag) && !others.iter().any(|t| t == tag) {
            others.push(tag.to_owned());
        }
    }
    Some(others)
}

/// Stores a tag-version list beside a value (or removes it, for an entry
/// without tags). Shared by the cluster's scripts.
pub(crate) const HOLD_LUA: &str = r"
local function hold(k, v, ms)
  if v == '' then redis.call('DEL', k) else redis.call('SET', k, v, 'PX', ms) end
end
";

/// `marked(v)`: the envelope `v` with the mark of an entry stored with tag
/// versions (`codec::mark_tagged`, in Lua); anything else as it is. For a
/// load that took over versions from the entry it replaces but names no
/// tag of its own (a batch): its process encoded the value unmarked.
pub(crate) static MARK_LUA: LazyLock<String> = LazyLock::new(|| {
    let (magic, flags_at, bit) = crate::codec::TAGGED_MARK;
    // Lua strings count from 1.
    let at = flags_at + 1;
    format!(
        r"
local function marked(v)
  if #v <= {flags_at} or string.byte(v, 1) ~= {magic} then return v end
  local f = string.byte(v, {at})
  if f % ({bit} * 2) >= {bit} then return v end
  return string.sub(v, 1, {flags_at}) .. string.char(f + {bit}) .. string.sub(v, {after})
end
",
        after = at + 1
    )
});

/// The line a lease's versions end with while the load has versions to
/// take over that it has not added yet: a list ending with it does not
/// read as one (see [`parse_versions`]), so a value stored with it is
/// served to no one.
pub(crate) const TAKING_OVER: &str = "~\n";

/// `tag_names(text)`: the set of tag names of a list [`versions_text`]
/// wrote, or nil if it does not read as one. For the lease script, which
/// compares the tags of the entry a load replaces with the load's own.
pub(crate) const TAG_NAMES_LUA: &str = r"
local function tag_names(text)
  local names, i = {}, 1
  while i <= #text do
    local colon = string.find(text, ':', i, true)
    if not colon then return nil end
    local len = tonumber(string.sub(text, i, colon - 1))
    if not len then return nil end
    names[string.sub(text, colon + 1, colon + len)] = true
    local nl = string.find(text, '\n', colon + len + 1, true)
    if not nl then return nil end
    i = nl + 1
  end
  return names
end
";

/// KEYS: a lease, the versions kept beside it. ARGV: its token, versions.
/// Adds the versions to those the lease's load started from, in place of
/// the [`TAKING_OVER`] line, while the token holds the lease (1; else 0).
pub(crate) static TAKE_OVER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
          local ms = redis.call('PTTL', KEYS[1])
          if ms <= 0 then return 0 end
          local held = redis.call('GET', KEYS[2])
          if not held then return 0 end
          if string.sub(held, -{n}) == '{line}' then held = string.sub(held, 1, -{after}) end
          redis.call('SET', KEYS[2], held .. ARGV[2], 'PX', ms)
          return 1",
        n = TAKING_OVER.len(),
        line = TAKING_OVER.escape_default(),
        after = TAKING_OVER.len() + 1,
    ))
});

/// KEYS: a tag's version. ARGV: a new version (used if there is none), ms.
/// The version, kept at least `ms` so that it outlives what is stored with
/// it.
pub(crate) static VERSION: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"local v = redis.call('GET', KEYS[1])
          if not v then v = ARGV[1]; redis.call('SET', KEYS[1], v) end
          if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
          return v",
    )
});

/// A fresh version: 16 hex digits, random.
pub(crate) fn new_version() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// One slot range of `CLUSTER SLOTS`: its first and last slot and the
/// address and node id of the primary serving it (the id empty when the
/// reply leaves it out).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SlotRange {
    pub(crate) first: u16,
    pub(crate) last: u16,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) id: String,
}

/// The cluster's slot map from a `CLUSTER SLOTS` reply, sorted.
pub(crate) fn slot_map(reply: redis::Value) -> redis::RedisResult<Vec<SlotRange>> {
    let bad = || {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "CLUSTER SLOTS answered something else than slot ranges",
        ))
    };
    let redis::Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut map = Vec::with_capacity(ranges.len());
    for range in ranges {
        let redis::Value::Array(range) = range else {
            return Err(bad());
        };
        let (Some(redis::Value::Int(first)), Some(redis::Value::Int(last)), Some(primary)) =
            (range.first(), range.get(1), range.get(2))
        else {
            return Err(bad());
        };
        let redis::Value::Array(primary) = primary else {
            return Err(bad());
        };
        let host = match primary.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let Some(redis::Value::Int(port)) = primary.get(1) else {
            return Err(bad());
        };
        let id = match primary.get(2) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        map.push(SlotRange {
            first: u16::try_from(*first).map_err(|_| bad())?,
            last: u16::try_from(*last).map_err(|_| bad())?,
            host,
            port: u16::try_from(*port).map_err(|_| bad())?,
            id,
        });
    }
    map.sort();
    Ok(map)
}

/// What one primary says of itself in `CLUSTER NODES` (its `myself`
/// line), beside what a slot map says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnView {
    /// Slot ranges it serves.
    slots: Vec<(u16, u16)>,
    /// Whether it imports a slot: `MIGRATE` may bring it keys at any time.
    importing: bool,
    /// The slots it migrates, and where to.
    migrating_to: Vec<Migration>,
}

/// A slot a primary migrates, and the node it migrates to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Migration {
    slot: u16,
    /// The target's node id.
    id: String,
    /// The target's address, as the same `CLUSTER NODES` answer gives it
    /// (`None`: not listed there, or no address yet).
    addr: Option<(String, u16)>,
}

/// A node that imports a slot but is not in the slot map: one added to the
/// cluster, which serves no slot yet (`CLUSTER SLOTS` lists only nodes
/// that serve one). A scan reaches it by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unlisted {
    pub(crate) addr: (String, u16),
    /// A slot it imports: a key of it that its primary does not hold is
    /// redirected there.
    pub(crate) slot: u16,
}

/// The address (`ip:port@bus-port[,hostname]`) of node `id` in a
/// `CLUSTER NODES` answer.
fn address_of(nodes: &str, id: &str) -> Option<(String, u16)> {
    let line = nodes
        .lines()
        .find(|line| line.split(' ').next() == Some(id))?;
    let addr = line.split(' ').nth(1)?;
    let addr = addr.split([',', '@']).next()?;
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The `myself` line of a `CLUSTER NODES` reply; `None` when there is none
/// or a slot field does not read (`0-5460`, `5461`, `[5462->-id]`
/// migrating, `[5462-<-id]` importing).
pub(crate) fn own_view(nodes: &str) -> Option<OwnView> {
    let line = nodes.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    })?;
    let mut view = OwnView {
        slots: Vec::new(),
        importing: false,
        migrating_to: Vec::new(),
    };
    let slot = |text: &str| text.parse::<u16>().ok().filter(|&s| usize::from(s) < SLOTS);
    for field in line.split(' ').skip(8).filter(|f| !f.is_empty()) {
        if let Some(open) = field.strip_prefix('[').and_then(|f| f.strip_suffix(']')) {
            if let Some((at, id)) = open.split_once("->-") {
                view.migrating_to.push(Migration {
                    slot: slot(at)?,
                    id: id.to_owned(),
                    addr: address_of(nodes, id),
                });
            } else if let Some((at, _)) = open.split_once("-<-") {
                slot(at)?;
                view.importing = true;
            } else {
                return None;
            }
            continue;
        }
        let (first, last) = match field.split_once('-') {
            Some((first, last)) => (slot(first)?, slot(last)?),
            None => (slot(field)?, slot(field)?),
        };
        if first > last {
            return None;
        }
        view.slots.push((first, last));
    }
    Some(view)
}

/// What a scan of every primary of `map` must do next, once each has said
/// what it is now ([`own_view`], in the order of [`primaries`]; `None`
/// for one whose answer did not read, or was refused). A pass scans every
/// node at once, and `SCAN` is sure to return only the keys present
/// throughout it: a key that `MIGRATE` moved during the pass may have
/// arrived on its target after the target's scan and left its source
/// before the source's scan reached it.
pub(crate) enum AfterPass {
    /// Nothing moved: the pass saw every key.
    Complete,
    /// Scan these primaries (`listed`: indexes into [`primaries`]) once
    /// more: they import a slot, or serve one the map gave another node, so
    /// keys may have arrived there during the pass; and the nodes the map
    /// does not list that a primary migrates a slot to (`unlisted`), which
    /// no pass scanned. A key that left its source during the pass did so
    /// before the source's scan ended, so it is on its target throughout
    /// this second scan, unless it moves on again meanwhile (two
    /// migrations of its slot within one pass: not covered). When a node's
    /// answer did not read, every primary.
    Rescan {
        listed: Vec<usize>,
        unlisted: Vec<Unlisted>,
    },
    /// The map is out of date (a primary no longer serves a slot the map
    /// gives it), or a slot migrates to a node whose address is not known:
    /// read the map and run the passes again.
    Stale,
}

/// Decides [`AfterPass`] from each primary's own view.
pub(crate) fn after_pass(map: &[SlotRange], views: &[Option<OwnView>]) -> AfterPass {
    let nodes = primaries(map);
    let Some(views) = views.iter().map(Option::as_ref).collect::<Option<Vec<_>>>() else {
        // What a node imports, or where it migrates, is not known: every
        // primary is scanned again, which finds whatever moved between
        // the primaries of the map during the pass.
        return AfterPass::Rescan {
            listed: (0..nodes.len()).collect(),
            unlisted: Vec::new(),
        };
    };
    let mut rescan = Vec::new();
    let mut unlisted: Vec<Unlisted> = Vec::new();
    for (i, ((host, port), view)) in nodes.iter().zip(views).enumerate() {
        let given: Vec<(u16, u16)> = map
            .iter()
            .filter(|r| r.host == *host && r.port == *port)
            .map(|r| (r.first, r.last))
            .collect();
        let covers = |ranges: &[(u16, u16)], s: u16| ranges.iter().any(|&(a, b)| a <= s && s <= b);
        let lost = given
            .iter()
            .any(|&(a, b)| (a..=b).any(|s| !covers(&view.slots, s)));
        if lost {
            return AfterPass::Stale;
        }
        for to in &view.migrating_to {
            if !to.id.is_empty() && map.iter().any(|r| r.id == to.id) {
                // A primary of the map, which says it imports the slot.
                continue;
            }
            let Some(addr) = &to.addr else {
                return AfterPass::Stale;
            };
            if !unlisted.iter().any(|u| u.addr == *addr) {
                unlisted.push(Unlisted {
                    addr: addr.clone(),
                    slot: to.slot,
                });
            }
        }
        let gained = view
            .slots
            .iter()
            .any(|&(a, b)| (a..=b).any(|s| !covers(&given, s)));
        if view.importing || gained {
            rescan.push(i);
        }
    }
    if rescan.is_empty() && unlisted.is_empty() {
        AfterPass::Complete
    } else {
        AfterPass::Rescan {
            listed: rescan,
            unlisted,
        }
    }
}

/// The primaries of a slot map, each once.
pub(crate) fn primaries(map: &[SlotRange]) -> Vec<(String, u16)> {
    let mut nodes: Vec<(String, u16)> = map.iter().map(|r| (r.host.clone(), r.port)).collect();
    nodes.sort();
    nodes.dedup();
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_computed_as_redis_computes_them() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        // An empty hash tag hashes the whole key; only the first `{` counts.
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn every_slot_has_an_epoch_key_and_a_probe_key_that_hash_to_it() {
        for s in 0..SLOTS {
            assert_eq!(slot(epoch_key("ns", s).as_bytes()), s, "slot {s}");
            assert_eq!(slot(probe_key("ns", s).as_bytes()), s, "slot {s}");
        }
    }

    #[test]
    fn an_entry_and_everything_beside_it_share_a_slot() {
        for key in ["ns:p:1", "ns:p:a}b", "ns:p:{x}", "ns:p:}", "ns:p:\\:{"] {
            let value = value_key(key);
            let s = slot(value.as_bytes());
            for suffix in [LEASE, TAGS, LEASE_TAGS] {
                assert_eq!(slot(beside(&value, suffix).as_bytes()), s, "{key}{suffix}");
            }
            // A pattern invalidation's first pass finds a lease and
            // removes the versions its load read with it.
            let lease = beside(&value, LEASE);
            assert_eq!(lease_tags_of(&lease), beside(&value, LEASE_TAGS));
        }
        assert_eq!(value_pattern("ns:p:*"), "{ns:p:*}");
        assert_eq!(version_key("ns:~tag:t"), "{ns:~tag:t}");
        assert!(is_record(&version_key("ns:~tag:t"), "ns"));
        assert!(is_record("{~tag:t}", ""));
        assert!(!is_record("{ns:item:7}", "ns"));
        assert!(!is_record("{ns:item:7}:~lease", "ns"));
        assert!(!is_record("{other:~tag:t}", "ns"));
    }

    #[test]
    fn namespaces_that_would_move_hash_tags_are_refused() {
        assert!(namespace_problem("placement-v1").is_none());
        assert!(namespace_problem("").is_some());
        assert!(namespace_problem("a{b").is_some());
        assert!(namespace_problem("a}b").is_some());
    }

    #[test]
    fn a_load_takes_over_each_tag_it_does_not_name_once() {
        let replaced = versions_text([
            ("ns:~tag:a", Cow::from("1")),
            ("ns:~tag:b", Cow::from("2")),
            ("ns:~tag:a", Cow::from("3")),
            ("ns:~tag:c", Cow::from("4")),
        ]);
        let own = ["ns:~tag:b".to_owned()];
        assert_eq!(
            to_take_over(&replaced, &own),
            Some(vec!["ns:~tag:a".to_owned(), "ns:~tag:c".to_owned()])
        );
        assert_eq!(
            to_take_over(&replaced, &[]),
            Some(vec![
                "ns:~tag:a".to_owned(),
                "ns:~tag:b".to_owned(),
                "ns:~tag:c".to_owned()
            ])
        );
        let all = ["ns:~tag:c", "ns:~tag:a", "ns:~tag:b"].map(str::to_owned);
        assert_eq!(to_take_over(&replaced, &all), Some(vec![]));
        assert_eq!(to_take_over("garbage", &own), None);
    }

    #[test]
    fn version_lists_read_back_and_garbage_reads_as_none() {
        let text = versions_text([
            ("ns:~tag:a=b", Cow::from("00ff")),
            ("ns:~tag:\n", Cow::from("1")),
        ]);
        assert_eq!(
            parse_versions(&text),
            Some(vec![("ns:~tag:a=b", "00ff"), ("ns:~tag:\n", "1")])
        );
        assert_eq!(parse_versions(""), Some(vec![]));
        for garbage in ["x", "3:ab=1\n", "2:ab1\n", "2:ab=1", "99:a=1\n", "-1:=\n"] {
            assert_eq!(parse_versions(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn a_new_tag_version_is_sixteen_hex_digits_and_never_repeats() {
        let versions: std::collections::HashSet<String> = (0..64).map(|_| new_version()).collect();
        // 64 draws of 64 random bits: a repeat means they are not random.
        assert_eq!(versions.len(), 64);
        for v in &versions {
            assert_eq!(v.len(), 16, "{v}");
            assert!(u64::from_str_radix(v, 16).is_ok(), "{v}");
        }
    }

    /// One range of a `CLUSTER SLOTS` reply, the primary's host given as
    /// `host` (a bulk or a simple string), with one replica after it.
    fn range(first: i64, last: i64, host: redis::Value, port: i64) -> redis::Value {
        use redis::Value::{Array, BulkString, Int};
        Array(vec![
            Int(first),
            Int(last),
            Array(vec![host, Int(port), BulkString(b"id".to_vec())]),
            Array(vec![BulkString(b"10.0.0.9".to_vec()), Int(7009)]),
        ])
    }

    #[test]
    fn a_slot_map_is_read_sorted_with_either_kind_of_host_string() {
        use redis::Value::{Array, BulkString, SimpleString};
        let reply = Array(vec![
            range(10923, 16383, BulkString(b"10.0.0.3".to_vec()), 7003),
            range(0, 5460, SimpleString("10.0.0.1".into()), 7001),
            range(5461, 10922, BulkString(b"10.0.0.2".to_vec()), 7002),
            range(16000, 16001, BulkString(b"10.0.0.1".to_vec()), 7001),
        ]);
        let map = slot_map(reply).expect("a valid reply");
        let at = |first: u16, last: u16, host: &str, port: u16| SlotRange {
            first,
            last,
            host: host.into(),
            port,
            id: "id".into(),
        };
        assert_eq!(
            map,
            vec![
                at(0, 5460, "10.0.0.1", 7001),
                at(5461, 10922, "10.0.0.2", 7002),
                at(10923, 16383, "10.0.0.3", 7003),
                at(16000, 16001, "10.0.0.1", 7001),
            ]
        );
        // Each primary once, in order, the replicas not among them.
        assert_eq!(
            primaries(&map),
            vec![
                ("10.0.0.1".to_string(), 7001),
                ("10.0.0.2".to_string(), 7002),
                ("10.0.0.3".to_string(), 7003),
            ]
        );
        assert!(primaries(&[]).is_empty());
        // The primary's node id, whichever kind of string, or none.
        let with_id = |id: Option<redis::Value>| {
            let mut node = vec![BulkString(b"h".to_vec()), redis::Value::Int(7000)];
            node.extend(id);
            let range = Array(vec![
                redis::Value::Int(0),
                redis::Value::Int(1),
                Array(node),
            ]);
            slot_map(Array(vec![range])).expect("a valid reply")[0]
                .id
                .clone()
        };
        assert_eq!(with_id(Some(SimpleString("n1".into()))), "n1");
        assert_eq!(with_id(Some(BulkString(b"n2".to_vec()))), "n2");
        assert_eq!(with_id(None), "");
    }

    #[test]
    fn a_slot_map_reply_of_another_shape_is_an_error_not_a_panic() {
        use redis::Value::{Array, BulkString, Int, Nil};
        let host = || BulkString(b"h".to_vec());
        for reply in [
            Nil,
            Array(vec![Nil]),
            Array(vec![Array(vec![Int(0), Int(1)])]),
            Array(vec![Array(vec![Int(0), Int(1), Nil])]),
            Array(vec![range(0, 1, Int(3), 7000)]),
            Array(vec![Array(vec![Int(0), Int(1), Array(vec![host()])])]),
            Array(vec![range(-1, 1, host(), 7000)]),
            Array(vec![range(0, 70_000, host(), 7000)]),
            Array(vec![range(0, 1, host(), 70_000)]),
        ] {
            let err = slot_map(reply.clone()).expect_err("not a slot map");
            assert_eq!(err.kind(), redis::ErrorKind::Parse, "{reply:?}");
        }
        assert_eq!(slot_map(Array(vec![])).expect("no ranges"), vec![]);
    }

    /// `CLUSTER NODES` of the second of three primaries, as Redis 7
    /// prints it, with `extra` after its own slots.
    fn nodes_text(extra: &str) -> String {
        format!(
            "a1 10.0.0.1:7001@17001 master - 0 1 1 connected 0-5460\n\
             b2 10.0.0.2:7002@17002,node-b myself,master - 0 0 2 connected 5461-10921 10922{extra}\n\
             c3 10.0.0.3:7003@17003 master - 0 1 3 connected 10923-16383\n\
             d4 10.0.0.4:7004@17004 slave b2 0 1 2 connected\n"
        )
    }

    #[test]
    fn a_node_is_read_from_its_own_line() {
        assert_eq!(
            own_view(&nodes_text("")),
            Some(OwnView {
                slots: vec![(5461, 10921), (10922, 10922)],
                importing: false,
                migrating_to: vec![],
            })
        );
        let view = own_view(&nodes_text(" [10922->-c3] [3-<-a1]")).expect("reads");
        assert_eq!(
            view.migrating_to,
            vec![Migration {
                slot: 10922,
                id: "c3".into(),
                addr: Some(("10.0.0.3".into(), 7003)),
            }]
        );
        assert!(view.importing);
        assert_eq!(view.slots, vec![(5461, 10921), (10922, 10922)]);
        // Fields apart by more than one space.
        assert_eq!(
            own_view(&nodes_text("  10923")).expect("reads").slots,
            vec![(5461, 10921), (10922, 10922), (10923, 10923)]
        );
        // A node that serves no slot.
        let bare = "e5 10.0.0.5:7005@17005 myself,master - 0 0 0 connected\n";
        assert_eq!(own_view(bare).expect("reads").slots, vec![]);
        // Migrating to a node the answer gives with its hostname, to one
        // it does not list, and to one without an address yet.
        let to = |id: &str| {
            own_view(&format!(
                "{}f6 :0@0 master - 0 0 0 connected\n",
                nodes_text(&format!(" [10922->-{id}]"))
            ))
            .expect("reads")
            .migrating_to[0]
                .addr
                .clone()
        };
        assert_eq!(to("b2"), Some(("10.0.0.2".into(), 7002)));
        assert_eq!(to("e5"), None);
        assert_eq!(to("f6"), None);
        for bad in [
            " 16384",
            " 9-3",
            " x",
            " 1-",
            " [10922-?-c3]",
            " [99999->-c3]",
            " [3-<-a1",
            " [99999-<-a1]",
        ] {
            assert_eq!(own_view(&nodes_text(bad)), None, "{bad:?}");
        }
        assert_eq!(
            own_view("a1 10.0.0.1:7001@17001 master - 0 1 1 connected 0-5460"),
            None
        );
        assert_eq!(own_view(""), None);
    }

    /// The slot map of [`nodes_text`]'s cluster, each primary's id given.
    fn three() -> Vec<SlotRange> {
        let range = |first, last, n: u16, id: &str| SlotRange {
            first,
            last,
            host: format!("10.0.0.{n}"),
            port: 7000 + n,
            id: id.into(),
        };
        vec![
            range(0, 5460, 1, "a1"),
            range(5461, 10922, 2, "b2"),
            range(10923, 16383, 3, "c3"),
        ]
    }

    /// A primary's view; it migrates a slot to each node of `migrating_to`
    /// (ids; `e5` at 10.0.0.5:7005, not in [`three`]; `x9`, whose address
    /// is not known).
    fn view(slots: &[(u16, u16)], importing: bool, migrating_to: &[&str]) -> Option<OwnView> {
        let addr = |id: &str| match id {
            "a1" | "b2" | "c3" | "e5" => {
                let n = u16::from(id.as_bytes()[1] - b'0');
                Some((format!("10.0.0.{n}"), 7000 + n))
            }
            _ => None,
        };
        Some(OwnView {
            slots: slots.to_vec(),
            importing,
            migrating_to: migrating_to
                .iter()
                .map(|&id| Migration {
                    slot: slots[0].0,
                    id: id.to_owned(),
                    addr: addr(id),
                })
                .collect(),
        })
    }

    /// [`AfterPass::Rescan`] of these listed primaries, and these unlisted
    /// nodes (`(n, slot)`: 10.0.0.{n}:700{n}).
    fn rescan(pass: &AfterPass, listed: &[usize], unlisted: &[(u16, u16)]) -> bool {
        let unlisted: Vec<Unlisted> = unlisted
            .iter()
            .map(|&(n, slot)| Unlisted {
                addr: (format!("10.0.0.{n}"), 7000 + n),
                slot,
            })
            .collect();
        matches!(pass, AfterPass::Rescan { listed: l, unlisted: u } if l == listed && *u == unlisted)
    }

    #[test]
    fn after_a_pass_the_nodes_keys_may_have_reached_are_scanned_again() {
        let map = three();
        let as_given = [
            view(&[(0, 5460)], false, &[]),
            view(&[(5461, 10922)], false, &[]),
            view(&[(10923, 16383)], false, &[]),
        ];
        assert!(matches!(after_pass(&map, &as_given), AfterPass::Complete));
        // Slot 10922 migrates from the second to the third: the third
        // imports it, and only it may have received keys.
        let mut views = as_given.clone();
        views[1] = view(&[(5461, 10922)], false, &["c3"]);
        views[2] = view(&[(10923, 16383)], true, &[]);
        assert!(rescan(&after_pass(&map, &views), &[2], &[]));
        // Its migration ended during the pass: the third serves it and
        // says so first (it is told first); the map, read before, does not.
        views[2] = view(&[(10922, 16383)], false, &[]);
        assert!(rescan(&after_pass(&map, &views), &[2], &[]));
        // The second has been told too: the map is out of date.
        views[1] = view(&[(5461, 10921)], false, &[]);
        assert!(matches!(after_pass(&map, &views), AfterPass::Stale));
        // To a node the map does not list (one added to the cluster),
        // which no pass scanned: scanned by address, once however many
        // slots go there.
        let mut views = as_given.clone();
        views[0] = view(&[(0, 5460)], false, &["e5"]);
        assert!(rescan(&after_pass(&map, &views), &[], &[(5, 0)]));
        views[1] = view(&[(5461, 10922)], false, &["e5"]);
        views[2] = view(&[(10923, 16383)], true, &[]);
        assert!(rescan(&after_pass(&map, &views), &[2], &[(5, 0)]));
        // One whose address is not known, or no id: the map is read again.
        views[0] = view(&[(0, 5460)], false, &["x9"]);
        assert!(matches!(after_pass(&map, &views), AfterPass::Stale));
        views[0] = view(&[(0, 5460)], false, &[""]);
        assert!(matches!(after_pass(&map, &views), AfterPass::Stale));
        // An answer that did not read (or was refused): every primary is
        // scanned again, whatever the others say.
        let mut views = as_given.clone();
        views[0] = None;
        assert!(rescan(&after_pass(&map, &views), &[0, 1, 2], &[]));
        views[1] = view(&[(5461, 10921)], false, &["e5"]);
        assert!(rescan(&after_pass(&map, &views), &[0, 1, 2], &[]));
        // A slot in the middle of a range lost, one gained at its edge.
        let mut views = as_given.clone();
        views[0] = view(&[(0, 99), (101, 5460)], false, &[]);
        assert!(matches!(after_pass(&map, &views), AfterPass::Stale));
        let mut views = as_given;
        views[0] = view(&[(0, 5461)], false, &[]);
        assert!(rescan(&after_pass(&map, &views), &[0], &[]));
    }

    #[test]
    fn version_lists_are_injective() {
        let a = versions_text([("t:a", Cow::from("1")), ("b", Cow::from("2"))]);
        let b = versions_text([("t", Cow::from("a=1\n1:b")), ("", Cow::from("2"))]);
        assert_ne!(a, b);
        assert_eq!(versions_text([]), "");
    }
}
