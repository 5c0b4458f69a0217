"""The web face of the gateway: the playground, the team portal and the admin pages, served by the
gateway itself. Pages are server-rendered shells; everything they show comes from the JSON API,
called by small hand-written ES modules with the key the user signed in with."""
