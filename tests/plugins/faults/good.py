from plugin_health import Plugin, tool


class Good(Plugin):
    version = "1.0.0"

    def initialize(self, context):
        self.greeting = context.config.get("greeting", "hello")

    @tool
    def greet(self, who: str) -> str:
        return f"{self.greeting} {who}"
