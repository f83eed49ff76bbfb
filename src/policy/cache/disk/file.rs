//! The disk tier's files: one per entry, at `PATH/HH/PRIMARY/VARIANCE` (the key's hashes in
//! hex; `-` for an answer without `Vary`), so the variants of one URI share a folder that an
//! invalidation removes whole, and no folder holds more than a share of the entries.
//!
//! A file is written under `PATH/tmp/` and renamed into place: a reader (this process or
//! another, as during a binary upgrade) sees the old file or the new one, never half of one.
//! It opens with a fixed header (a magic number that carries the format's version, the key,
//! and the lengths of what follows), then Pingora's serialized meta, what a purge selects the
//! entry by, and the body. A file whose lengths do not add up (a crash mid-copy, another
//! format) is treated as absent and removed. Files are not synced to disk: after a power loss
//! a cache may lose entries, never serve a torn one.

use super::super::about::Names;
use bytes::Bytes;
use pingora_cache::key::{CompactCacheKey, HashBinary};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// `PYLONC`, then the format's version.
const MAGIC: [u8; 8] = *b"PYLONC\x00\x01";
/// Magic, primary, variance flag and variance, five lengths.
const HEAD: usize = 8 + 16 + 1 + 16 + 4 * 4 + 8;
const TMP: &str = "tmp";

/// A stored entry as read back.
pub struct Record {
    pub meta: (Vec<u8>, Vec<u8>),
    pub names: Names,
    pub body: Bytes,
}

/// What a scan finds of an entry without reading its answer.
pub struct Found {
    pub key: CompactCacheKey,
    pub names: Names,
    pub size: usize,
    pub modified: SystemTime,
}

fn hex(bin: &HashBinary) -> String {
    bin.iter().map(|b| format!("{b:02x}")).collect()
}

/// Make `dir` and its parents, readable by this user only (answers may be private to the
/// fleet behind the gateway).
pub fn make_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The folder of every variant of `primary`.
pub fn dir_of(root: &Path, primary: &HashBinary) -> PathBuf {
    let name = hex(primary);
    root.join(&name[..2]).join(name)
}

pub fn path_of(root: &Path, key: &CompactCacheKey) -> PathBuf {
    let variance = key.variance.as_deref().map_or_else(|| "-".into(), hex);
    dir_of(root, &key.primary).join(variance)
}

/// The file's size for these parts.
pub fn size_of(
    key: &CompactCacheKey,
    meta: &(Vec<u8>, Vec<u8>),
    names: &[u8],
    body: usize,
) -> usize {
    HEAD + meta.0.len() + meta.1.len() + names.len() + key.user_tag.len() + body
}

fn head(key: &CompactCacheKey, lengths: [usize; 5]) -> Vec<u8> {
    let mut head = Vec::with_capacity(HEAD);
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&key.primary);
    match &key.variance {
        Some(v) => {
            head.push(1);
            head.extend_from_slice(&v[..]);
        }
        None => head.extend_from_slice(&[0; 17]),
    }
    for len in &lengths[..4] {
        head.extend_from_slice(&(*len as u32).to_le_bytes());
    }
    head.extend_from_slice(&(lengths[4] as u64).to_le_bytes());
    head
}

/// The key and the five lengths a header holds, if it is one.
fn parse_head(head: &[u8]) -> Option<(CompactCacheKey, [usize; 5])> {
    if head.len() < HEAD || head[..8] != MAGIC {
        return None;
    }
    let primary: HashBinary = head[8..24].try_into().ok()?;
    let variance: Option<Box<HashBinary>> = match head[24] {
        0 => None,
        1 => Some(Box::new(head[25..41].try_into().ok()?)),
        _ => return None,
    };
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap_or([0; 4]));
    let body = u64::from_le_bytes(head[57..65].try_into().ok()?);
    let lengths = [
        u32_at(41) as usize,
        u32_at(45) as usize,
        u32_at(49) as usize,
        u32_at(53) as usize,
        usize::try_from(body).ok()?,
    ];
    let key = CompactCacheKey {
        primary,
        variance,
        user_tag: "".into(),
    };
    Some((key, lengths))
}

/// A name under `PATH/tmp/` no other writer uses: this process's id and a counter.
fn tmp_name(root: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    root.join(TMP).join(format!("{}.{n}", std::process::id()))
}

/// Store an entry: written aside, then renamed over any earlier file of its key. The size
/// written.
pub fn write(
    root: &Path,
    key: &CompactCacheKey,
    meta: &(Vec<u8>, Vec<u8>),
    names: &[u8],
    body: &[u8],
) -> io::Result<usize> {
    let tag = key.user_tag.as_bytes();
    let lengths = [
        meta.0.len(),
        meta.1.len(),
        names.len(),
        tag.len(),
        body.len(),
    ];
    let tmp = tmp_name(root);
    let mut file = match open_new(&tmp) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_dir(&root.join(TMP))?;
            open_new(&tmp)?
        }
        other => other?,
    };
    let written = (|| {
        file.write_all(&head(key, lengths))?;
        for part in [&meta.0[..], &meta.1, names, tag, body] {
            file.write_all(part)?;
        }
        drop(file);
        let path = path_of(root, key);
        match fs::rename(&tmp, &path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_dir(path.parent().unwrap_or(root))?;
                fs::rename(&tmp, &path)
            }
            other => other,
        }
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(HEAD + lengths.iter().sum::<usize>())
}

fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// The entry of `key` at `path`, whole; `None` where there is none (or a file that is not one,
/// which is removed).
pub fn read(path: &Path, key: &CompactCacheKey) -> io::Result<Option<Record>> {
    let data = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => Bytes::from(other?),
    };
    let Some(record) = parse(&data, key) else {
        let _ = fs::remove_file(path);
        return Ok(None);
    };
    Ok(Some(record))
}

fn parse(data: &Bytes, key: &CompactCacheKey) -> Option<Record> {
    let (found, lengths) = parse_head(data)?;
    if found.primary != key.primary || found.variance != key.variance {
        return None;
    }
    let total = lengths
        .iter()
        .try_fold(HEAD, |sum, len| sum.checked_add(*len))?;
    if total != data.len() {
        return None;
    }
    let mut at = HEAD;
    let mut next = |len: usize| {
        let part = data.slice(at..at + len);
        at += len;
        part
    };
    let meta = (next(lengths[0]).to_vec(), next(lengths[1]).to_vec());
    let names = serde_json::from_slice(&next(lengths[2])).ok()?;
    next(lengths[3]);
    let body = next(lengths[4]);
    Some(Record { meta, names, body })
}

/// Replace the meta of `key`'s file by what `change` makes of it, keeping its body. Nothing
/// when the file is gone.
pub fn rewrite(
    root: &Path,
    key: &CompactCacheKey,
    change: impl FnOnce(&(Vec<u8>, Vec<u8>)) -> Option<(Vec<u8>, Vec<u8>)>,
) -> io::Result<()> {
    let Some(record) = read(&path_of(root, key), key)? else {
        return Ok(());
    };
    let Some(meta) = change(&record.meta) else {
        return Ok(());
    };
    let names = serde_json::to_vec(&record.names)?;
    write(root, key, &meta, &names, &record.body).map(drop)
}

/// Remove one entry's file, and its folder once it holds no other variant.
pub fn remove(root: &Path, key: &CompactCacheKey) -> io::Result<()> {
    let path = path_of(root, key);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(dir) = path.parent() {
        let _ = fs::remove_dir(dir);
    }
    Ok(())
}

/// Remove every variant stored for `primary`.
pub fn remove_all(root: &Path, primary: &HashBinary) -> io::Result<()> {
    match fs::remove_dir_all(dir_of(root, primary)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What the header and the purge names of the file at `path` say, and its size.
fn read_head(path: &Path) -> io::Result<Option<Found>> {
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    let mut head = [0; HEAD];
    match file.read_exact(&mut head) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let Some((key, lengths)) = parse_head(&head) else {
        return Ok(None);
    };
    let total = lengths
        .iter()
        .try_fold(HEAD, |sum, len| sum.checked_add(*len));
    if total != usize::try_from(metadata.len()).ok() {
        return Ok(None);
    }
    file.seek(SeekFrom::Current((lengths[0] + lengths[1]) as i64))?;
    let mut names = vec![0; lengths[2]];
    file.read_exact(&mut names)?;
    let Ok(names) = serde_json::from_slice(&names) else {
        return Ok(None);
    };
    let mut tag = vec![0; lengths[3]];
    file.read_exact(&mut tag)?;
    let key = CompactCacheKey {
        user_tag: String::from_utf8_lossy(&tag).into(),
        ..key
    };
    Ok(Some(Found {
        key,
        names,
        size: total.unwrap_or_default(),
        modified: metadata.modified()?,
    }))
}

/// Every entry under `root`, in no order; files that are not entries, and writes abandoned
/// more than a minute ago (a writer that died), are removed.
pub fn scan(root: &Path, mut found: impl FnMut(Found) -> bool) -> io::Result<()> {
    let abandoned = SystemTime::now() - Duration::from_secs(60);
    if let Ok(tmp) = fs::read_dir(root.join(TMP)) {
        for file in tmp.flatten() {
            let old = file.metadata().and_then(|m| m.modified());
            if old.is_ok_and(|t| t < abandoned) {
                let _ = fs::remove_file(file.path());
            }
        }
    }
    for top in fs::read_dir(root)?.flatten() {
        if top.file_name() == TMP || !top.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for primary in fs::read_dir(top.path())?.flatten() {
            let Ok(variants) = fs::read_dir(primary.path()) else {
                continue;
            };
            for variant in variants.flatten() {
                let path = variant.path();
                match read_head(&path) {
                    Ok(Some(entry)) if path == path_of(root, &entry.key) => {
                        if !found(entry) {
                            return Ok(());
                        }
                    }
                    Ok(_) => {
                        let _ = fs::remove_file(&path);
                    }
                    // Gone meanwhile (another process removed it), or unreadable.
                    Err(_) => {}
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::CacheHashKey;
    use pingora_cache::CacheKey;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pylon-disk-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn key(variance: Option<&str>) -> CompactCacheKey {
        let mut key = CacheKey::new("path:2:/a\n", "");
        if let Some(v) = variance {
            key.set_variance_key(pingora_cache::key::hash_key(v));
        }
        key.to_compact()
    }

    #[test]
    fn an_entry_is_read_back_as_written_and_found_by_a_scan() {
        let root = scratch("roundtrip");
        let names = Names {
            path: "/a".into(),
            tags: vec!["t".into()],
            ..Names::default()
        };
        let encoded = serde_json::to_vec(&names).unwrap();
        let meta = (vec![1, 2, 3], vec![4, 5]);
        let plain = key(None);
        let gzip = key(Some("gzip"));
        let size = write(&root, &plain, &meta, &encoded, b"hello").unwrap();
        write(&root, &gzip, &meta, &encoded, b"zipped").unwrap();
        assert_eq!(
            fs::metadata(path_of(&root, &plain)).unwrap().len() as usize,
            size
        );
        let back = read(&path_of(&root, &plain), &plain).unwrap().unwrap();
        assert_eq!((back.meta, &back.body[..]), (meta.clone(), &b"hello"[..]));
        assert_eq!(back.names, names);
        // Another key's file is not this key's entry.
        let data = Bytes::from(fs::read(path_of(&root, &plain)).unwrap());
        assert!(parse(&data, &gzip).is_none());

        let mut seen = Vec::new();
        scan(&root, |f| {
            seen.push((f.key.combined_bin(), f.size));
            true
        })
        .unwrap();
        seen.sort();
        let mut expected = vec![
            (plain.combined_bin(), size),
            (gzip.combined_bin(), size + 1),
        ];
        expected.sort();
        assert_eq!(seen, expected);

        rewrite(&root, &gzip, |_| Some((vec![9], vec![]))).unwrap();
        let back = read(&path_of(&root, &gzip), &gzip).unwrap().unwrap();
        assert_eq!((back.meta.0, &back.body[..]), (vec![9], &b"zipped"[..]));
        remove(&root, &plain).unwrap();
        assert!(read(&path_of(&root, &plain), &plain).unwrap().is_none());
        remove_all(&root, &plain.primary).unwrap();
        assert!(!dir_of(&root, &plain.primary).exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_torn_or_foreign_file_is_not_an_entry_and_is_removed() {
        let root = scratch("torn");
        let k = key(None);
        write(&root, &k, &(vec![1], vec![2]), b"{}", b"body").unwrap();
        let path = path_of(&root, &k);
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() - 1]).unwrap();
        assert!(read(&path, &k).unwrap().is_none());
        assert!(!path.exists());
        make_dir(path.parent().unwrap()).unwrap();
        fs::write(&path, [b'x'; 100]).unwrap();
        let mut count = 0;
        scan(&root, |_| {
            count += 1;
            true
        })
        .unwrap();
        assert_eq!(count, 0);
        assert!(!path.exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
