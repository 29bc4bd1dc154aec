package kube

// ManagedByLabel marks every object flotilla writes, so that pruning,
// removal and conflict checks touch only flotilla's own. Every subsystem
// labels with these; the packages that export the names alias them.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "flotilla"
)

// ManagedLabels is a fresh map each time: callers may add to it.
func ManagedLabels() map[string]string { return map[string]string{ManagedByLabel: ManagedBy} }
