"""The `jamsweep` command: parsing and printing (app, options, console), and what it reads
for people (overview) or writes for them (starter grids). It calls the typed API in
`orchestrator.sweep`; nothing here talks to Ray."""
