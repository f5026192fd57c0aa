// Package deploy validates the Kubernetes manifests under deploy/: each
// kustomization is rendered in-process with kustomize's krusty, every object
// is decoded strictly into its real API type (an unknown or misspelt field
// fails), and the properties the proxy's safety depends on are checked
// (one replica replaced with Recreate, probes on the admin port, a
// non-root read-only container, a config volume laid out like the config's
// relative paths, selectors that select, a node DaemonSet that leaves the
// proxy's own registry and the system images alone). kubeconform runs too
// when it is on PATH and its schemas can be had.
//
// It is a module of its own so that the Kubernetes and kustomize
// dependencies stay out of the proxy's module.
package deploy
