// Command gorender executes an Ollama-style chat template with Go's text/template.
//
// Usage: gorender TEMPLATE_FILE < values.json
//
// The JSON holds what Ollama passes to a TEMPLATE: System, Messages (Role, Content, Thinking,
// ToolCalls), Tools, Think, IsThinkSet. Tool functions and call arguments print as JSON through
// String methods, as Ollama's own API types do.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/template"
)

// Function is a tool's function definition; printed, it is its JSON.
type Function struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Parameters  any    `json:"parameters"`
}

func (f *Function) String() string { return marshal(f) }

// Tool is one entry of .Tools.
type Tool struct {
	Type     string   `json:"type"`
	Function Function `json:"function"`
}

// Arguments are a tool call's arguments; printed, they are their JSON.
type Arguments map[string]any

func (a Arguments) String() string { return marshal(map[string]any(a)) }

// CallFunction is the function part of one tool call.
type CallFunction struct {
	Name      string    `json:"name"`
	Arguments Arguments `json:"arguments"`
}

// ToolCall is one entry of a message's .ToolCalls.
type ToolCall struct {
	Function CallFunction `json:"function"`
}

// Message is one entry of .Messages.
type Message struct {
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Thinking  string     `json:"thinking,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
}

// Values is what the template sees at the top level.
type Values struct {
	System     string
	Messages   []Message
	Tools      []Tool
	Think      bool
	IsThinkSet bool
}

func marshal(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("!(%v)", err)
	}
	return string(b)
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gorender TEMPLATE_FILE < values.json")
		os.Exit(2)
	}
	text, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var values Values
	if err := json.NewDecoder(os.Stdin).Decode(&values); err != nil {
		fmt.Fprintln(os.Stderr, "values:", err)
		os.Exit(2)
	}
	tmpl, err := template.New("chat").Parse(string(text))
	if err != nil {
		fmt.Fprintln(os.Stderr, "parse:", err)
		os.Exit(1)
	}
	if err := tmpl.Execute(os.Stdout, values); err != nil {
		fmt.Fprintln(os.Stderr, "execute:", err)
		os.Exit(1)
	}
}
