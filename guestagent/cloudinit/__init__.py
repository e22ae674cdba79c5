"""cloud-init integration: the cloud-config key ``guestagent:`` and the module ``cc_guestagent``.

``schema`` declares the key (generated from the daemon's key table), ``settings`` turns it into the
TOML configuration file (pure functions), ``module`` is what cloud-init calls.
"""
