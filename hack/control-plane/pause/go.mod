// The test node's pod sandbox image: holds a pod's namespaces. Built by hack/control-plane.sh
// (no registry here to pull registry.k8s.io/pause from).
module substratus.test/control-plane/pause

go 1.26.0
