"""The LLMDeployment operator: API models, validation, rendering and the kopf controller."""
