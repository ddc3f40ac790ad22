# A Bot API stub on 127.0.0.1:8081 for the real-systemd test (the VM's python3-minimal has
# no http.server or json): getMe answers, getUpdates is held for its timeout, as Telegram
# holds it while no message comes, then answers an empty list; getWebhookInfo says no
# webhook is set; anything else answers true.
import re, socket, threading, time

def answer(method, body):
    method = method.lower()
    if method == "getme":
        return ('{"id":1,"is_bot":true,"first_name":"Hermes","username":"hermes_vm_bot",'
                '"can_join_groups":true,"can_read_all_group_messages":false,'
                '"supports_inline_queries":false,"can_connect_to_business":false,'
                '"has_main_web_app":false}')
    if method == "getwebhookinfo":
        return '{"url":"","has_custom_certificate":false,"pending_update_count":0}'
    if method == "getupdates":
        m = re.search(r'"?timeout"?[=:]\s*(\d+)', body)
        time.sleep(min(int(m.group(1)) if m else 0, 50))
        return "[]"
    return "true"

def serve(conn):
    data = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, data = data.split(b"\r\n\r\n", 1)
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            while len(data) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            body, data = data[:length].decode(), data[length:]
            method = head.split(b" ")[1].decode().rsplit("/", 1)[-1]
            payload = ('{"ok":true,"result":%s}' % answer(method, body)).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8081))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
