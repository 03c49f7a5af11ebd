pytest_plugins = ["npclient.testing.pytest_plugin"]
