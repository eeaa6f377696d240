// Command pause is the process that keeps a pod's namespaces alive while its containers come
// and go. As PID 1 of the pod (shared PID namespace) it also reaps orphans; it exits on
// SIGINT or SIGTERM, which is how the kubelet stops a sandbox.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func reapChildren() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s == syscall.SIGCHLD {
			reapChildren()
			continue
		}
		os.Exit(0)
	}
}
