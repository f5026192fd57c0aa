// Package names holds the distribution grammar for repository names, shared
// by the request parser and the upstream client so both refuse exactly the
// same names. It is hand-written rather than a regexp because it runs on
// every request; the tests check it against the grammar's regexp.
package names

import "strings"

// MaxRepositoryLength is the longest repository name accepted.
const MaxRepositoryLength = 255

// IsComponent reports whether s is one path component of a repository name:
// [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*.
func IsComponent(s string) bool {
	i := 0
	for {
		start := i
		for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= '0' && s[i] <= '9') {
			i++
		}
		if i == start {
			return false // empty, or a separator not followed by [a-z0-9]
		}
		if i == len(s) {
			return true
		}
		switch s[i] {
		case '.':
			i++
		case '_':
			i++
			if i < len(s) && s[i] == '_' {
				i++
			}
		case '-':
			for i < len(s) && s[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// IsRepository reports whether s is a repository name: components joined
// by single slashes, at most MaxRepositoryLength bytes.
func IsRepository(s string) bool {
	if s == "" || len(s) > MaxRepositoryLength {
		return false
	}
	for {
		c, rest, more := strings.Cut(s, "/")
		if !IsComponent(c) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}
