// Package nodeverifier is "portcullis node-verifier": an executable for
// containerd 2.x's image verifier plugin (io.containerd.image-verifier.v1.bindir)
// that asks a Portcullis proxy's admin API for the verdict of the digest
// containerd is about to pull, and accepts or rejects the pull with it.
//
// containerd runs every executable in its bin_dir on each pull through the
// transfer service with the fixed arguments -name, -digest and
// -stdin-media-type, the image's OCI descriptor on stdin and its own
// environment; exit status 0 accepts the pull, anything else rejects it,
// and stdout (at most 32 KiB) is the reason containerd reports. A verifier
// still running at per_verifier_timeout is killed and the pull fails.
// Settings therefore come from a file, named by --config (a wrapper script
// in bin_dir passes it), by $PORTCULLIS_NODE_VERIFIER_CONFIG, or
// /etc/portcullis/node-verifier.yaml.
//
// Trust: the verifier trusts the proxy's admin API, reached at admin_url
// over TLS checked against ca_file (or the system roots), or plain HTTP to
// a loopback address; plain HTTP elsewhere needs insecure_plain_http. It
// trusts nothing else: containerd's arguments and stdin are checked against
// each other, the proxy's answer is read through max_response_bytes and
// parsed strictly, and it must be about the digest asked. Anything that is
// not an allow or warn answer for that digest rejects the pull. Only a
// proxy that cannot be reached at all (refused, unresolvable, timed out)
// is accepted, and then only with fail_open, loudly; a TLS failure is never
// "unreachable". The admin token is sent, never printed.
package nodeverifier
