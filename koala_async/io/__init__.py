"""I/O shell: MQTT transport, embedded broker, resource probe."""
