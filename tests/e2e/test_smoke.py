import ollama


def test_chat_through_the_proxy(cluster):
    client = ollama.Client(host=cluster.url)
    resp = client.chat(model="llama3.2:1b", messages=[{"role": "user", "content": "hi"}],
                       options={"seed": 1})
    assert resp.message.content
    assert resp.done
