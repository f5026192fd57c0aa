// Package tuffetch downloads TUF metadata and targets for go-tuf's
// updater: the one piece of the TUF client that speaks HTTP, kept under
// proxy with the rest of the program's HTTP.
//
// Trust: nothing fetched is trusted here. The fetcher only bounds what it
// reads (the updater's length limit for each file, a bound on each
// answer's headers, a timeout for each download, no redirect to another
// host); go-tuf verifies signatures,
// thresholds, versions, hashes and expiry of everything it returns.
package tuffetch
