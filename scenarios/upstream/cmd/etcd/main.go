// Command etcd is etcd's own server, built from the go.etcd.io/etcd/server/v3
// module at the version k8s.io/kubernetes pins, because that module ships no
// main package of its own.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
