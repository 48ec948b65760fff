"""Stand-in teacher for timing the review (NOT a model): an OpenAI-compatible /v1/chat/completions that answers each
passage of bench/documentos/protocolo_primeros_auxilios.md with question/answer pairs written by hand by the
developer, imitating a mid-size instruct model, faults included (an answer that contradicts the passage, a vague
question, an ungrounded detail); passages it has no pairs for get prose, which afinar lists as «sin preguntas».
There is no capable model on this machine (no network): this only lets the review queue be timed on 20 drafts.

    python bench/documentos/profesor_simulado.py 8078 &
    afinar borradores bench/documentos/protocolo_primeros_auxilios.md --profesor http://127.0.0.1:8078/v1 \
        --modelo profesor-simulado --salida /tmp/borradores.jsonl
    python bench/studio_review.py --borradores /tmp/borradores.jsonl \
        --decisiones bench/documentos/decisiones_revision.json --resto aceptar --lectura 180 --tecleo 35
"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QA = {
 "comprobar que el lugar es seguro": [
  ("¿Qué es lo primero que debo hacer ante un accidente?", "Comprobar que el lugar es seguro para ti y para la persona herida; después, ver si responde y si respira con normalidad."),
  ("¿Qué tengo que decir cuando llamo al 112?", "Qué ha pasado, dónde estás y cuántas personas hay heridas. No cuelgues hasta que el operador te lo diga."),
  ("¿Puedo darle agua a una persona herida que está medio inconsciente?", "No. A una persona herida o con la conciencia disminuida no se le da de comer ni de beber."),
 ],
 "boqueadas aisladas": [
  ("Una persona no responde y solo hace boqueadas de vez en cuando. ¿Está respirando?", "No: las boqueadas aisladas no son una respiración normal. Trátalo como una parada: llama al 112 con el altavoz y empieza las compresiones torácicas enseguida."),
  ("¿Cómo se hacen bien las compresiones torácicas?", "En el centro del pecho, con los brazos rectos, hundiendo unos 5 o 6 centímetros, a 100 a 120 por minuto y dejando que el pecho vuelva a su sitio entre compresiones."),
  ("¿Qué hay que hacer con el desfibrilador?", "Encenderlo y seguir sus instrucciones. Cuando la persona empiece a moverse se pueden quitar los parches y apagarlo."),
 ],
 "posición lateral de seguridad para que la lengua": [
  ("¿Qué hago si alguien está inconsciente pero respira con normalidad?", "Si no sospechas una lesión de columna, colócalo en posición lateral de seguridad, llama al 112 y comprueba su respiración cada minuto."),
  ("¿Para qué sirve la posición lateral de seguridad?", "Para que la lengua o el vómito no le tapen la vía aérea."),
  ("¿Qué dice el texto sobre la respiración?", "Que hay que comprobarla."),
 ],
 "tose con fuerza": [
  ("Mi compañero se ha atragantado pero tose con fuerza. ¿Le doy golpes en la espalda?", "No. Anímale a seguir tosiendo y no le des golpes mientras la tos sea fuerte."),
  ("¿Qué hago si la persona atragantada ya no puede toser ni hablar?", "Dale hasta 5 golpes secos entre los omóplatos inclinándola hacia delante; si no sale, hasta 5 compresiones abdominales. Alterna 5 y 5."),
  ("¿Qué hago si la persona atragantada pierde el conocimiento?", "Túmbala con cuidado, llama al 112 y empieza la reanimación con compresiones torácicas."),
 ],
 "sangra mucho": [
  ("¿Cómo se para una hemorragia fuerte en una herida?", "Aprieta directamente sobre la herida con un apósito o una tela limpia, con fuerza y sin levantarla para mirar, al menos 10 minutos. Si se empapa, pon otro encima sin quitar el primero."),
  ("¿Cuándo se pone un torniquete?", "Cuando la hemorragia de un brazo o una pierna pone en peligro la vida y no para apretando. Se pone unos 5 cm por encima de la herida, se anota la hora y no se afloja."),
  ("Me sangra la nariz, ¿echo la cabeza hacia atrás?", "No. Siéntate con la cabeza inclinada hacia delante y aprieta la parte blanda de la nariz durante 10 minutos."),
 ],
 "agua corriente fresca, no helada, durante unos 20": [
  ("¿Cuánto tiempo hay que enfriar una quemadura?", "Unos 20 minutos, con agua corriente fresca, no helada, y cuanto antes."),
  ("¿Puedo ponerme pasta de dientes en una quemadura?", "No. No se aplican pasta de dientes, aceite, mantequilla ni hielo, y no se revientan las ampollas."),
  ("¿Cuándo tiene que ver a un médico una quemadura?", "Si es más grande que la palma de la mano. En los demás casos se puede curar en casa con una crema para quemaduras."),
 ],
 "crisis convulsiva": [
  ("¿Hay que meterle algo en la boca a alguien que convulsiona para que no se muerda la lengua?", "No. No se le mete nada en la boca ni se le sujeta: protege su cabeza con algo blando y aparta los objetos."),
  ("¿Cuándo hay que llamar al 112 por una convulsión?", "Si dura más de 5 minutos, si es la primera, si se repite sin recuperar la conciencia, si se ha herido o si no respira con normalidad después."),
 ],
}

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt = " ".join(m["content"] for m in body["messages"])
        pairs = next((v for k, v in QA.items() if k in prompt), None)
        time.sleep(0.3)
        if pairs is None:
            text = "Este fragmento trata de primeros auxilios y es muy importante conocerlo."
        else:
            text = json.dumps([{"pregunta": q, "respuesta": a} for q, a in pairs], ensure_ascii=False)
        out = {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
               "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
               "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4, "total_tokens": (len(prompt) + len(text)) // 4}}
        data = json.dumps(out).encode()
        self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        data = json.dumps({"object": "list", "data": [{"id": "profesor-simulado", "object": "model"}]}).encode()
        self.send_response(200); self.send_header("content-type", "application/json"); self.send_header("content-length", str(len(data))); self.end_headers(); self.wfile.write(data)

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
