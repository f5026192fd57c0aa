// Package blobs is the proxy's verified blob cache: content-addressed
// files on a local disk, one per upstream and digest, evicted least
// recently used by size and by free disk space. It knows nothing of HTTP
// or policy and never logs; what it counts is read through Stats.
//
// # What it trusts
//
// Nothing it did not check. A blob enters the cache only through a Writer
// whose caller has already checked the bytes against their digest while
// they streamed (the proxy's upstream client does); Commit still refuses a
// file whose length is not the announced size. The file is written under
// a temporary name, synced and then renamed, so a crash never leaves a
// partial file under a blob's name, and temporary files are removed at
// Open.
//
// Files found on disk at Open were written by an earlier run, or planted.
// They are not trusted: a background scan re-hashes every file and only
// files whose content matches the digest their path names enter the index;
// the others are removed. Until a file has been scanned it is a miss. Once
// indexed, a file is trusted to stay as written (Get checks its size, not
// its content): the directory must be writable by the proxy alone.
//
// The cache is keyed by upstream and digest: the same digest from two
// upstreams is two files. Who may read a blob (blob gating per upstream
// and repository) is decided by the caller before it asks the cache.
//
// # What it guarantees
//
//   - Bytes on disk (indexed files plus room claimed by running Writers)
//     stay within MaxBytes, and a Writer is refused room that would leave
//     less than MinFreeBytes free on the file system. Writers claim room
//     a step at a time as their bytes arrive, evicting least recently
//     used files for it, so a Writer abandoned early has evicted about
//     what it wrote; the declared sizes of running Writers together stay
//     within MaxBytes, so each can claim its whole size. Files not yet
//     scanned at Open are not counted until they are indexed.
//   - A file handed out by Get stays readable after eviction (it is
//     unlinked, not truncated).
//   - Safe for concurrent use.
package blobs
