// Package deploy holds the deployment files' checks that need the
// Kubernetes API types: a module of its own, so the main go.mod does not
// carry k8s.io and KEDA for a test. `make test` runs it.
package deploy
