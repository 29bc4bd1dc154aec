// Package ring shares reconcile work among hub replicas: the replicas form
// a memberlist cluster (gossip, failure detection), and rendezvous hashing
// over the live members gives every key (a member cluster) one owner. A
// member that dies hands its keys to the survivors and gets exactly those
// back when it returns; the other keys never move.
//
// The ring is advice, not a fence: two replicas may briefly disagree (say,
// across a partition). The hub fences the work itself with etcd locks.
package ring

import (
	"hash/fnv"
	"slices"
)

// Owner is the member with the highest rendezvous score for key, "" with no
// members. Scores depend only on (member, key), so removing a member moves
// only the keys it owned, and adding it back moves only those back.
func Owner(key string, members []string) string {
	best, bestScore := "", uint64(0)
	for _, m := range members {
		s := score(m, key)
		if best == "" || s > bestScore || (s == bestScore && m < best) {
			best, bestScore = m, s
		}
	}
	return best
}

// Assign maps every member to the keys it owns (sorted); members that own
// nothing map to an empty list.
func Assign(keys, members []string) map[string][]string {
	out := map[string][]string{}
	for _, m := range members {
		out[m] = []string{}
	}
	for _, k := range keys {
		if o := Owner(k, members); o != "" {
			out[o] = append(out[o], k)
		}
	}
	for _, ks := range out {
		slices.Sort(ks)
	}
	return out
}

func score(member, key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(key))
	// fnv's low bits mix poorly for keys that differ only at the end: a
	// final avalanche (splitmix64's) spreads them.
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
