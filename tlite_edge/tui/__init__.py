"""The terminal chat: slash commands and transcripts (session), line editing and streaming (terminal)."""
